//! The Kubernetes manifest importer on arbitrary text (one or two files):
//! a config or named errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A NUL splits the input into two files.
    let files: Vec<(String, String)> = text
        .splitn(2, '\0')
        .enumerate()
        .map(|(i, t)| (format!("m{i}.yaml"), t.to_string()))
        .collect();
    if let Ok(yaml) = shadowgate::config::kube::convert_texts(&files) {
        // What the importer writes must load, or fail with named errors.
        let _ = shadowgate::config::from_yaml("converted.yaml", &yaml);
    }
});
