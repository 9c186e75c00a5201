//! ec2kit against the real local services: `AwsEc2` on moto, `SshRemote`
//! on OpenSSH sshd, `LocalRemote` on this machine. Start them with
//! `scripts/testbed up` (or run `scripts/test`).

// Test code: a panic is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod local;
mod ssh;
