//! cargo-fuzz entry for `syn_cookies`; the body is `ephemera::fuzzing::syn_cookies::run`,
//! which the library's unit tests also replay on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::syn_cookies::run(data));
