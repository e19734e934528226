//! `hostaction_runtime::fuzzing::files_ops` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_runtime::fuzzing::files_ops(data));
