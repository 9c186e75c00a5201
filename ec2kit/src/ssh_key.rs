//! Client public keys (feature `ssh`): which key a connection logged in
//! with, in `authorized_keys` form, so a caller that rewrites the login
//! user's keys can refuse to drop the very key in use.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A client's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// The key type, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The key blob, base64 (the second field of an `authorized_keys` line).
    pub key_base64: String,
    /// Where it came from: a key file's path, or `agent:<comment>`.
    pub source: String,
}

impl PublicKey {
    /// The key from its wire blob (the type is the blob's first string).
    pub fn from_blob(blob: &[u8], source: impl Into<String>) -> Option<Self> {
        let mut r = Reader(blob);
        let key_type = String::from_utf8(r.string()?.to_vec()).ok()?;
        Some(Self {
            key_type,
            key_base64: base64::engine::general_purpose::STANDARD.encode(blob),
            source: source.into(),
        })
    }

    /// The public key of a private key file: its `.pub` companion when
    /// there is one, else the public half that an OpenSSH-format private
    /// key carries in clear (even when the private half is encrypted).
    /// `None` for other formats (PEM).
    pub fn of_key_file(private: &Path) -> Option<Self> {
        let source = private.display().to_string();
        let mut pub_path = private.as_os_str().to_owned();
        pub_path.push(".pub");
        if let Ok(text) = std::fs::read_to_string(&pub_path) {
            let mut fields = text.split_whitespace();
            if let (Some(t), Some(b)) = (fields.next(), fields.next()) {
                return Some(Self {
                    key_type: t.to_owned(),
                    key_base64: b.to_owned(),
                    source,
                });
            }
        }
        let text = std::fs::read_to_string(private).ok()?;
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .ok()?;
        let mut r = Reader(bytes.strip_prefix(b"openssh-key-v1\0")?);
        r.string()?; // cipher
        r.string()?; // kdf
        r.string()?; // kdf options
        r.u32()?; // number of keys
        Self::from_blob(r.string()?, source)
    }

    /// `type base64`, as in `authorized_keys`.
    pub fn authorized_keys_line(&self) -> String {
        format!("{} {} {}", self.key_type, self.key_base64, self.source)
    }
}

/// SSH wire-format fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        let s = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_a_key_file_with_or_without_its_pub() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "me@here", "-f"])
            .arg(&key)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no ssh-keygen");
            return;
        }
        let pub_line = std::fs::read_to_string(dir.path().join("id.pub")).unwrap();
        let from_pub = PublicKey::of_key_file(&key).unwrap();
        assert_eq!(from_pub.key_type, "ssh-ed25519");
        assert_eq!(
            Some(from_pub.key_base64.as_str()),
            pub_line.split_whitespace().nth(1)
        );
        std::fs::remove_file(dir.path().join("id.pub")).unwrap();
        let from_private = PublicKey::of_key_file(&key).unwrap();
        assert_eq!(from_private.key_base64, from_pub.key_base64);
        assert!(PublicKey::of_key_file(&dir.path().join("missing")).is_none());
        assert!(PublicKey::from_blob(&[0, 0, 0, 9, b'x'], "junk").is_none());
    }
}
