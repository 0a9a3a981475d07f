//! cargo-fuzz entry for `port_table`; the body is `ephemera::fuzzing::port_table::run`,
//! which the library's unit tests also replay on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::port_table::run(data));
