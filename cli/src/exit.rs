//! Exit codes: a documented contract (docs/cli.md, "Exit codes").

/// Everything asked for was done.
pub(crate) const SUCCESS: u8 = 0;
/// Something failed (an API call, a host, a partial failure of a fleet job,
/// a threshold exceeded).
pub(crate) const FAILURE: u8 = 1;
/// The command line or the configuration is wrong; nothing was changed.
/// (clap uses the same code for its own usage errors.)
pub(crate) const USAGE: u8 = 2;
/// The reader of the output went away (`ektool … | head`): 128 + SIGPIPE,
/// what a shell reports for a program killed by SIGPIPE. Nothing is
/// printed about it.
pub(crate) const PIPE: u8 = 141;
/// Interrupted by SIGINT (128 + 2), after the failure path ran.
#[allow(dead_code)]
pub(crate) const INTERRUPTED: u8 = 130;
/// Terminated by SIGTERM (128 + 15), after the failure path ran.
#[allow(dead_code)]
pub(crate) const TERMINATED: u8 = 143;
