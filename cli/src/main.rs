//! `hostaction`: run a host action on the machine you are on, inspect one,
//! push and pull action artifacts, tend the node's module store, and run
//! the node agent.
//!
//! One file per command in [`commands`] (its flags and its `execute`);
//! flags several commands share, the node cache and output in [`common`].
//!
//! Exit codes: 0 the action succeeded; 1 the action failed (returned an error,
//! trapped, hit its deadline or a limit); 2 bad input (usage, module, params,
//! grant, policy); 3 refused by the grant (the module imports a capability the
//! effective grant does not give; it never started); 4 a host error; 5 a
//! registry error (unreachable, unauthorized, not found, content that does not
//! match its digest).

mod commands;
mod common;
mod scaffold;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hostaction_runtime::engine::compile;
use hostaction_telemetry::LogFormat;

use commands::{
    AgentCommand, CacheCommand, CrdsCommand, InspectCommand, NewCommand, PullCommand, PushCommand,
    RecoverCommand, RunCommand, SignCommand, UndoCommand,
};
use common::{CacheOptions, ErrorOutput, Output};

#[derive(Parser)]
#[command(
    name = "hostaction",
    version,
    about = "Run host actions: Wasm components with granted host capabilities"
)]
struct Cli {
    #[command(flatten)]
    cache: CacheOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an action on this host and print its outcome, log, changes and timing.
    Run(RunCommand),
    /// Undo a finished run on this host (by its runId): each change it made,
    /// newest first, where the host is still as the run left it; --list
    /// shows the runs this node keeps journals of.
    Undo(UndoCommand),
    /// Roll back the runs a crash cut short (every `run` does this first).
    Recover(RecoverCommand),
    /// List the capabilities a module imports and what it exports; with
    /// --grants/--policy, what it may do under them and what the policy takes away.
    Inspect(InspectCommand),
    /// Push a module, with payload files, as an OCI artifact; prints its
    /// reference by digest.
    Push(PushCommand),
    /// Pull an artifact into the module store by digest (resolving a tag
    /// once); prints its digest.
    Pull(PullCommand),
    /// Sign an artifact with a private key, as `cosign sign --key` does
    /// (`cosign verify --key` accepts it); prints where the signature is.
    Sign(SignCommand),
    /// Write a new action project: its world, typed params, a grant, and a
    /// README saying how to build, inspect, run and push it.
    New(NewCommand),
    /// Print the HostAction and HostActionRun CustomResourceDefinitions (YAML).
    Crds(CrdsCommand),
    /// The node agent: run this node's HostActionRuns from the API server
    /// (--node-name), or apply HostAction manifests from a directory with no
    /// API server (--manifests, static mode).
    Agent(AgentCommand),
    /// List the module store's artifacts, or collect unused ones.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Compiles a module read from stdin into the disk cache, within the
    /// limits it sets on itself: the compiler process the others start.
    #[command(name = compile::CHILD_SUBCOMMAND, hide = true)]
    Compile {
        /// What to compile, with which limits (JSON, written by the parent).
        spec: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let (format, default, output) = match &cli.command {
        Command::Compile { spec } => return ExitCode::from(compile::child_main(spec)),
        Command::Agent(agent) => (agent.log_format, "info", Output::Text),
        // A CLI run reports through its output; logs only for errors.
        command => (LogFormat::Text, "error", command.output()),
    };
    hostaction_telemetry::init_logging(format, default);
    match cli.command.execute(&cli.cache) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            match output {
                // One line, as before: `| head -1 | jq` keeps working.
                Output::Json => common::emit(&format!(
                    "{}\n",
                    serde_json::to_string(&ErrorOutput::from(&e)).unwrap_or_default()
                )),
                // A registry's answer or a file name can be in the message:
                // its escape sequences are shown, not obeyed.
                Output::Text => {
                    use std::io::Write as _;
                    let message =
                        hostaction_runtime::report::printable(&e.to_string()).into_owned();
                    let _ = writeln!(std::io::stderr(), "hostaction: {message}");
                }
            }
            ExitCode::from(e.exit_code())
        }
    }
}

impl Command {
    /// The output format the command was asked for (errors are written in it).
    fn output(&self) -> Output {
        match self {
            Command::Run(c) => c.output,
            Command::Undo(c) => c.output,
            Command::Recover(c) => c.output,
            Command::Inspect(c) => c.output,
            Command::Push(c) => c.output,
            Command::Pull(c) => c.output,
            Command::Sign(c) => c.output,
            Command::Cache(c) => c.output(),
            Command::New(_) | Command::Crds(_) | Command::Agent(_) | Command::Compile { .. } => {
                Output::Text
            }
        }
    }

    /// Runs the command; the exit code, or the error to report.
    fn execute(self, cache: &CacheOptions) -> Result<u8, hostaction_agent::Error> {
        let max_module_bytes = match &self {
            Command::Agent(agent) => agent.max_module_bytes(),
            _ => hostaction_runtime::engine::MAX_MODULE_BYTES,
        };
        let node = cache.node_cache(max_module_bytes)?;
        let done = match self {
            Command::Run(c) => c.execute(&node),
            Command::Undo(c) => c.execute(&node),
            Command::Recover(c) => c.execute(&node),
            Command::Inspect(c) => c.execute(&node),
            Command::Push(c) => c.execute(&node),
            Command::Pull(c) => c.execute(&node),
            Command::Sign(c) => c.execute(&node),
            Command::New(c) => c.execute(),
            Command::Crds(c) => c.execute(),
            Command::Agent(c) => return c.execute(&node),
            Command::Cache(c) => c.execute(&node),
            // Handled in `main`, before logging starts.
            Command::Compile { .. } => Ok(0),
        };
        Ok(done?)
    }
}
