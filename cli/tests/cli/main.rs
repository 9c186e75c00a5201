//! The `ektool` binary end to end, against moto and sshd from the bench.

mod harness;

mod basics;
mod ec2;
mod host;
