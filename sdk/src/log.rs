//! The run's log.
//!
//! Always allowed: writing a log line needs no grant. Each call is one line;
//! the host bounds the log's size and says in the run's report how many bytes
//! it dropped.

use crate::bindings::hostaction::host::log as wit;

pub use wit::Level;

/// Appends one line at `level`; the named functions below are shorthands.
pub fn write(level: Level, message: &str) {
    wit::write(level, message);
}

/// Appends a trace line: detail that is only useful when debugging the action.
pub fn trace(message: &str) {
    write(Level::Trace, message);
}

/// Appends a debug line: what the action decided and why.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Appends an info line: what the action did.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Appends a warning: something the operator should look at; the run goes on.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Appends an error line: something failed.
pub fn error(message: &str) {
    write(Level::Error, message);
}
