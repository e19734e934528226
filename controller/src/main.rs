//! `hostaction-controller`: the controller alone, without the runtime (the
//! image the controller Deployment runs). `hostaction controller` is the
//! same command in the all-in-one CLI.

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
    hostaction_controller::cli::init_logging(cli.args.log_format, "info");
    hostaction_controller::cli::main(cli.args)
}
