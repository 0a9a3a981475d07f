//! cargo-fuzz entry for `demux`; the body is `ephemera::fuzzing::demux::run`,
//! which `tests/fuzz_regressions.rs` also replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::demux::run(data));
