//! Endpoint templating on arbitrary paths and explicit templates: bounded,
//! stable names, never a panic.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use shadowgate::diff::EndpointTemplater;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines: templates up to an empty line, then request paths.
    let mut lines = text.split('\n');
    let templates: Vec<String> = lines
        .by_ref()
        .take_while(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let Ok(mut t) = EndpointTemplater::new(&templates, 8) else {
        return;
    };
    let methods = [Method::GET, Method::POST, Method::DELETE];
    for (i, path) in lines.enumerate() {
        let method = &methods[i % methods.len()];
        let first = t.endpoint(method, path);
        // The same request always names the same endpoint.
        assert_eq!(first, t.endpoint(method, path));
        assert!(t.len() <= 8);
    }
});
