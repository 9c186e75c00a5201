//! deploykit against the bench's real sshd hosts and real git repositories.

// Test code: a panic is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod balancer;
mod db;
mod deploy;
mod faults;
mod git;
mod hang;
mod notify;
mod support;
mod takeover;
