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

/// Prints the completion script for the shell. It is generated in memory
/// first: clap_complete panics on a write error (`… | head`).
pub fn exec(args: Args) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "ektool", &mut script);
    crate::output::write(&script)
}
