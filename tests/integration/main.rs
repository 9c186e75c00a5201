//! Cross-crate integration tests against moto, sshd and git.
