//! `hostaction_runtime::fuzzing::files_path` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_runtime::fuzzing::files_path(data));
