//! hostaction end to end, in one test binary with a module per subject
//! (wasmtime's `tests/all/main.rs`): one link of wasmtime and kube instead
//! of one per file. Run one subject with a filter:
//! `cargo test --release --workspace --test all -- files::`.
//!
//! One binary is one process: what a module once had to itself per binary
//! is now per module — a shared control plane (each `real_*` module starts
//! its own, `kube_control_plane`), and a measure of the process's peak
//! resident set, taken in a child process running that test alone
//! ([`hostaction_tests::alone`]). systemd containers take turns process-wide
//! (`hostaction_tests::systemd`).

mod c;
mod cluster;
mod compile;
mod container;
mod crash;
mod engine;
mod escapes;
mod files;
mod grants;
mod hostile;
mod images;
mod js;
mod languages;
mod network;
mod oci;
mod overlay;
mod plan;
mod python;
mod real_apiserver;
mod real_hostile;
mod real_kustomize;
mod real_lifecycle;
mod real_manifests;
mod scaffold;
mod services;
mod signatures;
mod static_mode;
mod undo;
