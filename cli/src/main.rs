//! `ektool`: the reference CLI of the ektool libraries.
//!
//! `main` parses the command line, runs one command, and maps the outcome
//! to a documented exit code (see [`exit`]).

mod args;
mod commands;
mod context;
mod error;
mod exit;
mod fleet;
mod logging;
mod notify;
mod output;
mod progress;
mod prompt;
mod signals;

use std::process::ExitCode;

// The config file is the package's library target, shared with fabfiles.
use ektool::config;

fn main() -> ExitCode {
    quiet_closed_pipes();
    let (cli, command) = args::parse();
    logging::init(cli.global.verbose, cli.global.quiet, cli.global.log_format);
    // Accounts and a command that does not fan out over them: bad input.
    let accounts_in_config = cli.global.accounts.is_none()
        && cli.global.account.is_none()
        && config::Config::load(cli.global.config.as_deref()).is_ok_and(|c| c.accounts.is_some());
    if let Err(e) =
        fleet::check_fan_out(&command, cli.global.accounts.is_some(), accounts_in_config)
    {
        error::report_with_hint(&e, None);
        return ExitCode::from(e.exit_code());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    // A closed output pipe unwinds out of the command (destructors run),
    // and ends here, quietly.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let interrupt = signals::Interrupt::install();
            (commands::run(cli, interrupt.token()).await, interrupt)
        })
    }));
    let (result, interrupt) = match ran {
        Ok(r) => r,
        Err(payload) if output::is_closed_pipe_panic(payload.as_ref()) => {
            return ExitCode::from(exit::PIPE);
        }
        Err(payload) => std::panic::resume_unwind(payload),
    };
    // An interrupted run exits 128 + the signal, whatever the operation
    // made of it, after it has said what it did.
    let signalled = interrupt.exit_code();
    match result {
        Ok(()) => ExitCode::from(signalled.unwrap_or(exit::SUCCESS)),
        Err(err) if err.is_closed_pipe() => ExitCode::from(signalled.unwrap_or(exit::PIPE)),
        Err(err) => {
            let policy = commands::iam::policy_for(&command).map(|_| command.as_str());
            error::report_with_hint(&err, policy);
            ExitCode::from(signalled.unwrap_or_else(|| err.exit_code()))
        }
    }
}

/// `println!` panics when the reader of standard output went away (Rust
/// ignores SIGPIPE, and `unsafe_code` is forbidden here, so it cannot be
/// restored): that panic is not a bug, so its message and backtrace are
/// not printed; `main` ends the run with [`exit::PIPE`].
fn quiet_closed_pipes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .payload_as_str()
            .is_some_and(output::closed_pipe_message)
        {
            return;
        }
        default(info);
    }));
}
