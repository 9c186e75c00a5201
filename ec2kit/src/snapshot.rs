//! EBS snapshots.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{Region, SnapshotId, Tags, VolumeId};

/// The state of a snapshot.
///
/// Read from a string: the API's names, and any other string as
/// [`SnapshotState::Unknown`] (kept as written).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SnapshotState {
    /// Blocks are still being copied.
    Pending,
    /// Usable.
    Completed,
    /// Failed; the snapshot is unusable but still counts against limits.
    Error,
    /// Deleted into the Recycle Bin, restorable.
    Recoverable,
    /// Being restored from the Recycle Bin.
    Recovering,
    /// A state this version does not know.
    #[serde(untagged)]
    Unknown(String),
}

impl SnapshotState {
    /// The API's name of the state.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Error => "error",
            Self::Recoverable => "recoverable",
            Self::Recovering => "recovering",
            Self::Unknown(s) => s,
        }
    }
}

impl FromStr for SnapshotState {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "pending" => Self::Pending,
            "completed" => Self::Completed,
            "error" => Self::Error,
            "recoverable" => Self::Recoverable,
            "recovering" => Self::Recovering,
            other => Self::Unknown(other.to_owned()),
        })
    }
}

// By hand, not derived: serde reads an enum with an untagged variant by
// first copying the value into a buffer of its own, an allocation per
// snapshot of an inventory.
impl<'de> Deserialize<'de> for SnapshotState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SnapshotState;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a snapshot state string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SnapshotState, E> {
                Ok(match v {
                    "pending" => SnapshotState::Pending,
                    "completed" => SnapshotState::Completed,
                    "error" => SnapshotState::Error,
                    "recoverable" => SnapshotState::Recoverable,
                    "recovering" => SnapshotState::Recovering,
                    other => SnapshotState::Unknown(other.to_owned()),
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The storage tier of a snapshot (`StorageTier`).
///
/// Serialised as the API writes it (`standard`, `archive`); any other
/// string is kept as [`StorageTier::Unknown`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", from = "String")]
#[non_exhaustive]
pub enum StorageTier {
    /// The standard tier (incremental, billed for changed blocks).
    #[default]
    Standard,
    /// The archive tier (full snapshot, cheaper storage, restored before use).
    Archive,
    /// A tier this version does not know.
    #[serde(untagged)]
    Unknown(String),
}

impl StorageTier {
    /// The API's name of the tier.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Standard => "standard",
            Self::Archive => "archive",
            Self::Unknown(s) => s,
        }
    }

    /// Whether this is the standard tier (the default, not serialised).
    pub fn is_standard(&self) -> bool {
        *self == Self::Standard
    }
}

impl From<String> for StorageTier {
    fn from(s: String) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "" | "standard" => Self::Standard,
            "archive" => Self::Archive,
            _ => Self::Unknown(s),
        }
    }
}

impl From<&str> for StorageTier {
    fn from(s: &str) -> Self {
        Self::from(s.to_owned())
    }
}

impl fmt::Display for StorageTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An EBS snapshot.
///
/// Serialised, this is the inventory format `ektool snap list --output json`
/// writes and `ektool snap plan` reads: `id`, `volume_id`, `start_time`
/// (RFC 3339, UTC), `state` and `tags` are the fields a plan needs.
///
/// Kept small (a million of them are planned at once): the optional texts
/// are `Box<str>`, the id is stored inline and the tags are shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshot id.
    pub id: SnapshotId,
    /// Source volume (`vol-ffffffff` for copies: use lineage tags instead).
    pub volume_id: Option<VolumeId>,
    /// When the snapshot's point in time was taken.
    #[serde(with = "crate::rfc3339")]
    pub start_time: Timestamp,
    /// State.
    pub state: SnapshotState,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// Region; absent in inventories made elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    /// Progress in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Why a snapshot is in `error`, when EC2 says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_message: Option<Box<str>>,
    /// Size of the source volume in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size_gib: Option<i32>,
    /// Whether the snapshot is encrypted.
    #[serde(default)]
    pub encrypted: bool,
    /// KMS key of an encrypted snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<Box<str>>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Box<str>>,
    /// Owning account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<Box<str>>,
    /// Storage tier; `standard` is the default and is not written.
    #[serde(default, skip_serializing_if = "StorageTier::is_standard")]
    pub storage_tier: StorageTier,
}

impl Snapshot {
    /// A completed snapshot with only the fields a plan needs; the rest empty.
    pub fn new(
        id: SnapshotId,
        volume_id: Option<VolumeId>,
        start_time: Timestamp,
        state: SnapshotState,
    ) -> Self {
        Self {
            id,
            volume_id,
            start_time,
            state,
            tags: Tags::new(),
            region: None,
            progress: None,
            state_message: None,
            volume_size_gib: None,
            encrypted: false,
            kms_key_id: None,
            description: None,
            owner_id: None,
            storage_tier: StorageTier::Standard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde derives for the enum (the reading before it was written
    /// by hand).
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Derived {
        Pending,
        Completed,
        Error,
        Recoverable,
        Recovering,
        #[serde(untagged)]
        Unknown(String),
    }

    #[test]
    fn states_read_as_the_derived_reading_did() {
        for text in [
            "pending",
            "completed",
            "error",
            "recoverable",
            "recovering",
            "Completed",
            "archival",
            "",
            "é\"x",
        ] {
            let json = serde_json::to_string(text).unwrap();
            let mine: SnapshotState = serde_json::from_str(&json).unwrap();
            let derived: Derived = serde_json::from_str(&json).unwrap();
            assert_eq!(
                serde_json::to_string(&mine).unwrap(),
                serde_json::to_string(&derived).unwrap()
            );
            assert_eq!(
                matches!(mine, SnapshotState::Unknown(_)),
                matches!(derived, Derived::Unknown(_)),
                "{text}"
            );
        }
        assert!(serde_json::from_str::<SnapshotState>("5").is_err());
    }

    #[test]
    fn inventory_round_trip_keeps_required_fields() {
        let json = r#"[{"id":"snap-0123abcd","volume_id":"vol-0123abcd","start_time":"2024-01-02T03:04:05Z","state":"completed","tags":{"k":"v"}}]"#;
        let snaps: Vec<Snapshot> = serde_json::from_str(json).unwrap();
        assert_eq!(snaps[0].state, SnapshotState::Completed);
        assert_eq!(snaps[0].tags.get("k"), Some("v"));
        let back = serde_json::to_string(&snaps).unwrap();
        assert!(
            back.contains(r#""start_time":"2024-01-02T03:04:05Z""#),
            "{back}"
        );
        assert!(back.contains(r#""state":"completed""#));
    }

    #[test]
    fn tiers_read_and_standard_is_not_written() {
        let json = r#"[{"id":"snap-0123abcd","volume_id":null,"start_time":"2024-01-02T03:04:05Z","state":"completed","storage_tier":"archive"},
            {"id":"snap-0123abce","volume_id":null,"start_time":"2024-01-02T03:04:05Z","state":"completed"},
            {"id":"snap-0123abcf","volume_id":null,"start_time":"2024-01-02T03:04:05Z","state":"completed","storage_tier":"glacier"}]"#;
        let snaps: Vec<Snapshot> = serde_json::from_str(json).unwrap();
        assert_eq!(snaps[0].storage_tier, StorageTier::Archive);
        assert_eq!(snaps[1].storage_tier, StorageTier::Standard);
        assert_eq!(
            snaps[2].storage_tier,
            StorageTier::Unknown("glacier".into())
        );
        let back = serde_json::to_string(&snaps).unwrap();
        assert_eq!(back.matches("storage_tier").count(), 2, "{back}");
        assert!(back.contains(r#""storage_tier":"archive""#), "{back}");
    }

    #[test]
    fn unknown_state_survives() {
        let s: SnapshotState = serde_json::from_str(r#""archived""#).unwrap();
        assert_eq!(s, SnapshotState::Unknown("archived".into()));
        assert_eq!(
            "ERROR".parse::<SnapshotState>().unwrap(),
            SnapshotState::Error
        );
    }
}
