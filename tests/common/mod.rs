//! Helpers shared by the integration tests: locating the job binaries, running them and reading
//! their part files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of an example binary built by `cargo test` next to the test executables.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "{} is missing: cargo test builds examples, run the tests through cargo", path.display());
    path
}

/// Runs a job binary to completion and returns its output, failing the test on a non-zero exit.
pub fn run_ok(name: &str, args: &[&str]) -> Output {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed with {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a job binary to completion.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name)).args(args).env("RUST_LOG", "warn").output().expect("starting job binary")
}

/// The lines of all part files under `dir` whose name ends with `ext`, without CSV headers.
pub fn read_parts(dir: &Path, ext: &str, header: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("output directory").map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if !path.to_string_lossy().ends_with(ext) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for l in text.lines() {
            if Some(l) == header || l.is_empty() {
                continue;
            }
            lines.push(l.to_string());
        }
    }
    lines
}

/// A small deterministic pseudo-random generator for test data (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
