//! `hostaction-controller`: the controller (what the controller Deployment
//! runs); it links no wasmtime.

use clap::Parser;

/// The hostaction controller.
#[derive(Parser)]
#[command(name = "hostaction-controller", version)]
struct Cli {
    #[command(flatten)]
    args: hostaction_controller::cli::ControllerArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    hostaction_telemetry::init_logging(cli.args.log_format, "info");
    hostaction_controller::cli::main(cli.args)
}
