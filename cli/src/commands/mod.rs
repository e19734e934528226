//! One module per `hostaction` command: its flags and its `execute`, which
//! returns the exit code and prints a typed output (text or JSON).

mod agent;
mod cache;
mod crds;
mod inspect;
mod new;
mod pull;
mod push;
mod run;
mod sign;
mod undo;

pub use agent::AgentCommand;
pub use cache::CacheCommand;
pub use crds::CrdsCommand;
pub use inspect::InspectCommand;
pub use new::NewCommand;
pub use pull::PullCommand;
pub use push::PushCommand;
pub use run::RunCommand;
pub use sign::SignCommand;
pub use undo::{RecoverCommand, UndoCommand};
