//! KMS keys, as far as snapshot copies need them.

use serde::{Deserialize, Serialize};

/// A KMS key, as `DescribeKey` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KmsKey {
    /// The key id (a UUID, or `mrk-…` for multi-region keys).
    pub key_id: String,
    /// The key's ARN, which names its region.
    pub arn: Option<String>,
    /// `Enabled`, `Disabled`, `PendingDeletion`, ...
    pub state: String,
    /// `ENCRYPT_DECRYPT` for keys EBS can use.
    pub usage: Option<String>,
    /// `SYMMETRIC_DEFAULT` for keys EBS can use.
    pub spec: Option<String>,
    /// Who manages the key: `CUSTOMER`, or `AWS` for a key an AWS service
    /// made for the account (`alias/aws/ebs`), which cannot be granted
    /// to another account.
    #[serde(default)]
    pub manager: Option<String>,
}

impl KmsKey {
    /// A key with the given id and state, the rest as EBS needs it.
    pub fn new(key_id: impl Into<String>, state: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            arn: None,
            state: state.into(),
            usage: Some("ENCRYPT_DECRYPT".into()),
            spec: Some("SYMMETRIC_DEFAULT".into()),
            manager: None,
        }
    }

    /// Whether AWS manages the key (`KeyManager` `AWS`, e.g. the default
    /// EBS key `alias/aws/ebs`): what it encrypts cannot be shared with
    /// another account.
    pub fn is_aws_managed(&self) -> bool {
        self.manager.as_deref() == Some("AWS")
    }

    /// Why EBS could not encrypt with this key, or `None` when it can:
    /// EBS needs an enabled, symmetric encrypt/decrypt key.
    pub fn unusable_because(&self) -> Option<String> {
        if self.state != "Enabled" {
            return Some(format!("key state is {}", self.state));
        }
        if let Some(u) = self.usage.as_deref().filter(|u| *u != "ENCRYPT_DECRYPT") {
            return Some(format!("key usage is {u}, EBS needs ENCRYPT_DECRYPT"));
        }
        if let Some(s) = self.spec.as_deref().filter(|s| *s != "SYMMETRIC_DEFAULT") {
            return Some(format!("key spec is {s}, EBS needs a symmetric key"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enabled_symmetric_keys_are_usable() {
        assert_eq!(KmsKey::new("k", "Enabled").unusable_because(), None);
        assert!(
            KmsKey::new("k", "PendingDeletion")
                .unusable_because()
                .unwrap()
                .contains("PendingDeletion")
        );
        let mut k = KmsKey::new("k", "Enabled");
        k.usage = Some("SIGN_VERIFY".into());
        assert!(k.unusable_because().is_some());
        let mut k = KmsKey::new("k", "Enabled");
        k.spec = Some("RSA_2048".into());
        assert!(k.unusable_because().is_some());
    }
}
