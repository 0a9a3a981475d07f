//! Fuzz-target bodies, shared by cargo-fuzz (`fuzz/fuzz_targets/`) and the
//! replay of the seed corpus and the regression inputs in this module's
//! unit tests, so that every crash ever found is re-checked by plain
//! `cargo test` on stable, without libFuzzer.
//!
//! Each target is a `run(data: &[u8])` that panics when a property fails;
//! see `docs/testing.md` for how to run, reproduce and minimize.
//!
//! Not part of the library's API: compiled for the crate's own tests and
//! with the `fuzzing` feature, which `fuzz/Cargo.toml` turns on.

pub mod dns;
pub mod port_table;
pub mod rx_split;
pub mod socks_udp;
pub mod stack_hostile;
pub mod stack_pair;
pub mod syn_cookies;

/// Run target `name` on one input. Panics on a failed property, and on
/// an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "stack_hostile" => stack_hostile::run(data),
        "dns" => dns::run(data),
        "port_table" => port_table::run(data),
        "socks_udp" => socks_udp::run(data),
        "stack_pair" => stack_pair::run(data),
        "rx_split" => rx_split::run(data),
        "syn_cookies" => syn_cookies::run(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// The names of the fuzz targets.
pub const TARGETS: &[&str] = &[
    "stack_hostile",
    "dns",
    "port_table",
    "stack_pair",
    "rx_split",
    "socks_udp",
    "syn_cookies",
];

/// Seeds for target `name`: named inputs for `fuzz/corpus/<name>/`.
/// `stack_hostile` gets real packets for its fixture's 4-tuples,
/// `rx_split` super-packets as the kernel writes them; the structured
/// targets get seeded pseudo-random bytes, which decode to operation
/// sequences.
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    match name {
        "stack_hostile" => return stack_hostile::seeds(),
        "dns" => return dns::seeds(),
        "rx_split" => return rx_split::seeds(),
        "socks_udp" => return socks_udp::seeds(),
        _ => {}
    }
    let mut rng = crate::SeededRng::new(name.len() as u64);
    (0..6)
        .map(|i| {
            let len = 32 << (i % 4);
            let bytes = (0..len)
                .map(|_| crate::Rng::next_u64(&mut rng) as u8)
                .collect();
            (format!("random-{i}"), bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Replay the seed corpus (`fuzz/corpus/<target>/`) and every crash the
    //! fuzzers ever found (`fuzz/regressions/<target>/`) through the same
    //! bodies cargo-fuzz runs.

    use std::fs;
    use std::panic;
    use std::path::{Path, PathBuf};

    use super::*;

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
            if panic::catch_unwind(|| run(target, &data)).is_err() {
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
    fn stack_hostile_corpus_and_regressions() {
        replay("stack_hostile");
    }

    #[test]
    fn dns_corpus_and_regressions() {
        replay("dns");
    }

    #[test]
    fn port_table_corpus_and_regressions() {
        replay("port_table");
    }

    #[test]
    fn stack_pair_corpus_and_regressions() {
        replay("stack_pair");
    }

    #[test]
    fn rx_split_corpus_and_regressions() {
        replay("rx_split");
    }

    #[test]
    fn socks_udp_corpus_and_regressions() {
        replay("socks_udp");
    }

    #[test]
    fn syn_cookies_corpus_and_regressions() {
        replay("syn_cookies");
    }
}
