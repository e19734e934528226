//! `hostaction_runtime::fuzzing::network_args` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_runtime::fuzzing::network_args(data));
