//! ec2kit against the real local services: `AwsEc2` on moto, `SshRemote`
//! on OpenSSH sshd, `LocalRemote` on this machine. Start them with
//! `scripts/testbed up` (or run `scripts/test`).

mod aws;
mod local;
mod ssh;
