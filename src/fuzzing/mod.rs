//! Fuzz-target bodies, shared by cargo-fuzz (`fuzz/fuzz_targets/`) and the
//! plain-test replay of the seed corpus and the regression inputs
//! (`tests/fuzz_regressions.rs`), so that every crash ever found is
//! re-checked by `cargo test` on stable, without libFuzzer.
//!
//! Each target is a `run(data: &[u8])` that panics when a property fails;
//! see `docs/testing.md` for how to run, reproduce and minimize.
//!
//! Compiled only with the `fuzzing` feature (which the crate's
//! dev-dependency on itself turns on for tests and examples).

pub mod demux;
pub mod port_table;
pub mod stack_pair;
pub mod wire;

/// Run target `name` on one input. Panics on a failed property, and on
/// an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "demux" => demux::run(data),
        "port_table" => port_table::run(data),
        "stack_pair" => stack_pair::run(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// The names of the fuzz targets.
pub const TARGETS: &[&str] = &["demux", "port_table", "stack_pair"];

/// Seeds for target `name`: named inputs for `fuzz/corpus/<name>/`.
/// `demux` gets real packets for its fixture's 4-tuples; the structured
/// targets get seeded pseudo-random bytes, which decode to operation
/// sequences.
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    if name == "demux" {
        return demux::seeds();
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
