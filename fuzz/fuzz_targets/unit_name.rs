//! `hostaction_runtime::fuzzing::unit_name` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_runtime::fuzzing::unit_name(data));
