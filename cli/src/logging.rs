//! Logs go to stderr through `tracing`; `RUST_LOG` wins over `-v`/`-q`.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber: warnings by default, `-v` info, `-vv` debug,
/// `-vvv` trace; `-q` errors only.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,aws_config=warn,aws_smithy_runtime=warn",
        (false, 2) => "debug,aws_config=info,aws_smithy_runtime=info,hyper=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
