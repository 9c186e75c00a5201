//! snapkit against the real sshd of the test bench.

// Test code: a panic is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod consistency;
mod mount;
mod rsync;
