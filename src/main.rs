//! The `agentry` binary: parse the command line, run, exit with the command's code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the signal mask: from here to the
    // exit, SIGINT and SIGTERM are answered (see `commands::signals`).
    let signals = match agentry::commands::Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("error: cannot take over SIGINT and SIGTERM: {error}");
            return ExitCode::from(1);
        }
    };
    let cli = agentry::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(agentry::commands::execute(cli, signals));
    // Tasks still running (HTTP connections closing) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
