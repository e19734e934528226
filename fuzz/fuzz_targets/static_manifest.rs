//! `hostaction_runtime::fuzzing::static_manifest` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_runtime::fuzzing::static_manifest(data));
