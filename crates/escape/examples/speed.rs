//! The escaper's speed on hot data, beside serde_json's, for the inputs of
//! docs/benchmarks.md ("Recording, session 14"): a 4 KiB JSON document, 4
//! KiB of text with a newline every 58 bytes, 4 KiB of one letter.
//!
//! `cargo run --release -p shadowgate-escape --example speed`
//! Prints nanoseconds per call (the mean of 200,000 calls, each output
//! checked against serde_json's first) for every escaper the CPU can run:
//! the scalar one, and AVX2 and AVX-512 where it has them (shadowgate
//! uses the last of these). A machine shared with other work
//! moves these figures by up to 1.5x from run to run: compare within a run.

// A plain timing loop, no runtime: tokio's clock (the house rule for
// shadowgate's code) has nothing to offer here.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Instant;

const CALLS: u32 = 200_000;

fn json_document(size: usize) -> String {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < size - 120 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{},\"name\":\"item number {i}\",\"price\":{}.{:02},\"tags\":[\"red\",\"large\"],\"in_stock\":true}}",
            1000 + i,
            10 + i % 90,
            i % 100
        ));
        i += 1;
    }
    s + "]}"
}

/// Mean nanoseconds per call of `f` on `input`.
fn time(input: &str, f: impl Fn(&mut Vec<u8>, &str)) -> f64 {
    let mut out = Vec::with_capacity(input.len() * 2 + 64);
    let started = Instant::now();
    for _ in 0..CALLS {
        out.clear();
        f(&mut out, black_box(input));
        black_box(&out);
    }
    started.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

fn main() {
    let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n".repeat(72);
    let inputs = [
        ("JSON document", json_document(4096)),
        ("text, a newline every 58 bytes", text[..4096].to_string()),
        ("one letter repeated", "b".repeat(4096)),
    ];
    // Every escaper this CPU can run (the fastest is what shadowgate
    // uses), then serde_json.
    let paths = shadowgate_escape::paths();
    print!("{:32} {:>7}", "input (bytes)", "");
    for p in &paths {
        print!(" {:>11}", p.name);
    }
    println!(" {:>11}", "serde_json");
    for (name, input) in &inputs {
        let quoted = serde_json::to_string(input).unwrap();
        print!("{name:32} {:>7}", input.len());
        for p in &paths {
            let mut out = Vec::new();
            assert!(p.escape_utf8(&mut out, input.as_bytes()));
            assert_eq!(out, quoted.as_bytes()[1..quoted.len() - 1], "{}", p.name);
            let ns = time(input, |out, s| {
                p.escape_utf8(out, s.as_bytes());
            });
            print!(" {ns:>8.0} ns");
        }
        let serde = time(input, |out, s| {
            serde_json::to_writer(&mut *out, s).unwrap();
        });
        println!(" {serde:>8.0} ns");
    }
}
