//! `ektool completions SHELL`: shell completions from the clap definition.

use crate::error::CliError;

/// Arguments of `ektool completions`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Prints the completion script of `cli` (ektool's whole command line)
/// for the shell. It is generated in memory first: clap_complete panics on
/// a write error (`… | head`).
pub(crate) fn exec(args: Args, mut cli: clap::Command) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, "ektool", &mut script);
    crate::output::write(&script)
}
