//! cargo-fuzz entry for `port_table`; the body is `ephemera::fuzzing::port_table::run`,
//! which `tests/fuzz_regressions.rs` also replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::port_table::run(data));
