//! `ektool`: the reference CLI of the ektool libraries.
//!
//! `main` parses the command line, runs one command, and maps the outcome
//! to a documented exit code (see [`exit`]).

mod args;
mod commands;
mod config;
mod context;
mod error;
mod exit;
mod logging;
mod output;
mod progress;
mod signals;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    logging::init(cli.global.verbose, cli.global.quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let (result, interrupt) = runtime.block_on(async {
        let interrupt = signals::Interrupt::install();
        (commands::run(cli, interrupt.token()).await, interrupt)
    });
    // An interrupted run exits 128 + the signal, whatever the operation
    // made of it, after it has said what it did.
    let signalled = interrupt.exit_code();
    match result {
        Ok(()) => ExitCode::from(signalled.unwrap_or(exit::SUCCESS)),
        Err(err) => {
            error::report(&err);
            ExitCode::from(signalled.unwrap_or_else(|| err.exit_code()))
        }
    }
}
