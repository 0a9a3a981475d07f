//! Replay the fuzzers' seed corpus (`fuzz/corpus/<target>/`) and every
//! crash they ever found (`fuzz/regressions/<target>/`) through the same
//! target bodies cargo-fuzz runs, on stable and without libFuzzer.
//!
//! The `fuzzing` feature is on here through the crate's dev-dependency on
//! itself, so plain `cargo test` runs this.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use ephemera::fuzzing;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no seed corpus for {target}");
    let mut failed = Vec::new();
    for path in &files {
        let data = fs::read(path).unwrap();
        if panic::catch_unwind(|| fuzzing::run(target, &data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn demux_corpus_and_regressions() {
    replay("demux");
}

#[test]
fn port_table_corpus_and_regressions() {
    replay("port_table");
}

#[test]
fn stack_pair_corpus_and_regressions() {
    replay("stack_pair");
}
