//! Logs go to stderr through `tracing`; `RUST_LOG` wins over `-v`/`-q`.
//!
//! Colour only for a person: ANSI escapes only when stderr is a terminal
//! and `NO_COLOR` is unset (cron mail, journald and CI logs get plain
//! text). `--log-format json` (or `EKTOOL_LOG_FORMAT=json`) writes one JSON
//! object per line, for log pipelines and schedulers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::args::LogFormat;

/// Installs the subscriber: warnings by default, `-v` info, `-vv` debug,
/// `-vvv` trace; `-q` errors only.
pub(crate) fn init(verbose: u8, quiet: bool, format: LogFormat) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,aws_config=warn,aws_smithy_runtime=warn",
        (false, 2) => "debug,aws_config=info,aws_smithy_runtime=info,hyper=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Whether to colour log lines: on a terminal, unless `NO_COLOR` is set
/// to anything non-empty (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
