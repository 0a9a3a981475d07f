//! cargo-fuzz entry for `dns`; the body is `ephemera::fuzzing::dns::run`,
//! which the library's unit tests also replay on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::dns::run(data));
