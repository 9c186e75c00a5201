//! `ektool manpage`: man pages from the clap definition.

use std::path::PathBuf;

use crate::error::CliError;

/// Arguments of `ektool manpage`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Write `ektool.1` and one page per subcommand into this directory
    /// instead of printing `ektool.1`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Writes the man pages of `cmd` (ektool's whole command line).
pub(crate) fn exec(args: Args, cmd: clap::Command) -> Result<(), CliError> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
                path: dir.clone(),
                source,
            })?;
            clap_mangen::generate_to(cmd, &dir).map_err(|source| CliError::Io {
                path: dir.clone(),
                source,
            })
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|source| CliError::Io {
                    path: "<stdout>".into(),
                    source,
                })?;
            crate::output::write(&page)
        }
    }
}
