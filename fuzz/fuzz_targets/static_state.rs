//! `hostaction_runtime::fuzzing::static_state` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_runtime::fuzzing::static_state(data));
