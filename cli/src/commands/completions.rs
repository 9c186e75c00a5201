//! `ektool completions SHELL`: shell completions from the clap definition.

use clap::CommandFactory;

use crate::args::Cli;
use crate::error::CliError;

/// Arguments of `ektool completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for the shell.
pub fn exec(args: Args) -> Result<(), CliError> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "ektool",
        &mut std::io::stdout(),
    );
    Ok(())
}
