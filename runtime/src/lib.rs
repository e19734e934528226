//! The hostaction runtime: runs host actions — WebAssembly components whose only
//! powers are the host capabilities their grant gives them.
//!
//! The layers, top to bottom (see `DESIGN.md`):
//! - [`engine`]: one wasmtime engine per process, modules compiled once per digest
//!   and cached on disk, a fresh store per run with its limits, and the import
//!   check against the effective [`grant`] before anything starts;
//! - [`capabilities`]: one module per WIT interface, each checking its scope on
//!   every call and sending every mutation through [`effects`];
//! - host backends inside each capability (directory fds and `openat2` for files).
//!
//! It has no Kubernetes client and no command line: the node agent
//! (`hostaction-agent`) and the CLI (`hostaction-cli`) drive it, and
//! modules come from files or from `hostaction-distribution`'s store.
//!
//! ```no_run
//! use hostaction_runtime::{Runtime, RuntimeConfig, RunRequest, grant::{EffectiveGrant, Grant}};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let module = runtime.load_file("cni-install.wasm".as_ref())?;
//! let grant: Grant = serde_yaml_ng::from_str("files: {write: [/opt/cni/bin, /etc/cni/net.d]}")?;
//! let report = runtime.run(&module, RunRequest::new("{}", EffectiveGrant::new(&grant, None)?))?;
//! println!("{}", report.status);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod capabilities;
pub mod effects;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grant;
pub mod host;
pub mod report;
pub mod undo;

pub use engine::{LoadedModule, RunRequest, Runtime, RuntimeConfig};
pub use error::{Error, Result};
pub use report::{RunReport, RunStatus};

/// Host bindings of the `hostaction:host` WIT package, generated from `wit/`.
///
/// Every import is trappable (a host fault or the deadline becomes a trap) and
/// traced, so a `tracing` subscriber at debug level reads like an audit log.
#[allow(missing_docs)] // generated; the WIT files document the contract
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "action",
        imports: { default: trappable | tracing },
        trappable_error_type: {
            "hostaction:host/types.error" => crate::capabilities::CapError,
        },
    });
}
