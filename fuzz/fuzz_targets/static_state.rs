//! `hostaction_agent::fuzzing::static_state` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_agent::fuzzing::static_state(data));
