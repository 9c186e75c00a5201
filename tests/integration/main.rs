//! Cross-crate integration tests against moto, sshd and git.

// Test code: a panic is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod balancer;
