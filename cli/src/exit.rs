//! Exit codes: a documented contract (README, "Exit codes").

/// Everything asked for was done.
#[allow(dead_code)]
pub const SUCCESS: u8 = 0;
/// Something failed (an API call, a host, a partial failure of a fleet job,
/// a threshold exceeded).
pub const FAILURE: u8 = 1;
/// The command line or the configuration is wrong; nothing was changed.
/// (clap uses the same code for its own usage errors.)
pub const USAGE: u8 = 2;
