//! `hostaction_distribution::fuzzing::oci_manifest` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_distribution::fuzzing::oci_manifest(data));
