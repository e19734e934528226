//! `hostaction_distribution::fuzzing::oci_reference` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostaction_distribution::fuzzing::oci_reference(data));
