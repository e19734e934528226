//! The Rust guest SDK for hostaction actions.
//!
//! An *action* is a WebAssembly component that exports `run` from the
//! `hostaction:host` WIT package (see `wit/` at the repository root). This crate
//! hides the generated bindings behind a small API so that an action reads like
//! ordinary Rust:
//!
//! - [`action!`] turns `fn run(params: P) -> Result<Outcome, E>` into the
//!   component's `run` export: it parses the JSON params into `P`, forwards a
//!   panic's message to the run's log, and maps the result onto the WIT types.
//! - [`Outcome`] is what a run reports: whether it changed the host, one line
//!   for humans, and facts for machines.
//! - [`log`] writes to the run's log (always allowed).
//! - [`payload`] reads the files shipped in the action's artifact (always
//!   allowed).
//! - [`files`] is the `files` capability; [`network`] and [`services`] are the
//!   generated bindings of theirs.
//! - [`Error`] is the error every capability call can return, as a value.
//!
//! A component only imports the capability interfaces it calls, so its imports
//! are exactly the capabilities its grant must cover.
//!
//! # Example
//!
//! A complete action that ensures one file exists (build it for
//! `wasm32-wasip2` as a `cdylib`; `scripts/build-guests.sh` shows how):
//!
//! ```no_run
//! use hostaction_sdk::{Outcome, files, log};
//! use serde::Deserialize;
//!
//! /// The params, read from the run's JSON params.
//! #[derive(Deserialize)]
//! #[serde(rename_all = "camelCase", deny_unknown_fields)]
//! struct Params {
//!     /// Which file to write.
//!     path: String,
//!     /// What it must hold.
//!     contents: String,
//! }
//!
//! fn run(params: Params) -> Result<Outcome, hostaction_sdk::Error> {
//!     log::info(&format!("ensuring {}", params.path));
//!     let changed = files::ensure_file(&params.path, params.contents.as_bytes(), 0o644)?;
//!     Ok(Outcome::changed(changed)
//!         .message(format!("{} in place", params.path))
//!         .fact("path", params.path))
//! }
//!
//! hostaction_sdk::action!(run);
//! ```

mod error;
mod outcome;

#[doc(hidden)]
pub mod __private;
pub mod files;
pub mod log;
pub mod payload;

pub use error::Error;
pub use outcome::Outcome;

/// The bindings that `wit-bindgen` generates for the `action` world.
///
/// They are public so that an action can reach anything the SDK does not wrap
/// yet; prefer the wrappers ([`files`], [`log`]) where they exist. The error
/// type is remapped to [`Error`] so that it has a readable `Display`.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "action",
        path: "../wit",
        // The export macro is used from the action's crate (through
        // `hostaction_sdk::action!`), so it must be public and must find these
        // bindings by an absolute path.
        pub_export_macro: true,
        default_bindings_module: "hostaction_sdk::bindings",
        with: {
            "hostaction:host/types@0.1.0/error": crate::Error,
        },
        generate_all,
    });
}

/// The `network` capability: links, addresses, routes and network namespaces.
///
/// These are the generated bindings for now; ergonomic wrappers come later.
/// A component that calls nothing here does not import `network`.
pub mod network {
    pub use crate::bindings::hostaction::host::network::*;
}

/// The `services` capability: systemd units over D-Bus.
///
/// These are the generated bindings for now; ergonomic wrappers come later.
/// A component that calls nothing here does not import `services`.
pub mod services {
    pub use crate::bindings::hostaction::host::services::*;
}

/// Declares the action's entry point.
///
/// `hostaction_sdk::action!(run);` names a function
/// `fn run(params: P) -> Result<Outcome, E>` where `P: serde::de::DeserializeOwned`
/// and `E: core::fmt::Display`, and exports it as the component's `run`:
///
/// - the params JSON is parsed into `P`; when that fails the run returns
///   `Err("invalid params: <serde's message>")` without calling `run`. An empty
///   params string is read as `{}`, so that an action whose params all have
///   defaults can be run without any;
/// - a panic hook is installed (once) that writes the panic's message and
///   location to the run's log at error level, so that a panic, which aborts
///   the run, still says why in the log;
/// - `Ok(outcome)` becomes the WIT `outcome`, `Err(e)` becomes `e.to_string()`.
///
/// Use it once per crate, at module level.
#[macro_export]
macro_rules! action {
    ($run:path $(,)?) => {
        // The generated export glue is unsafe FFI; keep the allowance local.
        #[allow(unsafe_code)]
        const _: () = {
            struct __HostactionAction;

            impl $crate::bindings::Guest for __HostactionAction {
                fn run(
                    params: ::std::string::String,
                ) -> ::core::result::Result<$crate::bindings::Outcome, ::std::string::String>
                {
                    $crate::__private::run_action(&params, $run)
                }
            }

            $crate::bindings::export! {
                __HostactionAction with_types_in $crate::bindings
            }
        };
    };
}
