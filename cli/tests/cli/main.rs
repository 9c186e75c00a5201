//! The `ektool` binary end to end, against moto and sshd from the bench.

// Test code: a panic is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod moto;

mod accounts;
mod ami;
mod archive;
mod basics;
mod check;
mod chores;
mod deploy;
mod docs;
mod dry_run;
mod ec2;
mod fanout;
mod host;
mod iam;
mod image;
mod jobs;
mod jump;
mod mount;
mod plan_html;
mod preflight;
mod provision;
mod replicate;
mod roles;
mod snap;
mod sync;
mod vault;
mod vault_keep;
mod verify;
