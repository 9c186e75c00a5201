//! Lineage: which snapshots are versions of the same data.
//!
//! Every snapshot ektool makes carries tags that say where it came from
//! ([`tags`]). Retention groups snapshots by lineage: the source-volume
//! tag, so copies in other regions (whose `VolumeId` is a meaningless
//! `vol-ffffffff`) group with their source; then, for snapshots made by the
//! old Fabric tool, the `Volume` of its JSON description; then the
//! snapshot's own volume id — except the placeholder
//! [`PLACEHOLDER_VOLUME`] that EC2 gives every copy: copies made outside
//! ektool (console, AWS Backup, DLM) would all share it and collapse into
//! one lineage, so each is its own lineage (`snapshot:<id>`), or that of
//! its `ektool:source-snapshot` tag when it has one. The volume tag is
//! believed only where it can be true: on a copy (placeholder volume id)
//! or when it names the snapshot's own volume.
//!
//! A copy in a vault account carries the account it came from
//! ([`tags::SOURCE_ACCOUNT`]), and its lineage is `ACCOUNT/KEY`: two source
//! accounts' lineages of the same name (the same alias, the same volume id
//! from a restored account) never merge, so retention in the vault never
//! deletes one account's only copy in favour of another's.

use ec2kit::Snapshot;
use serde::Deserialize;

/// The tag keys ektool writes on every snapshot it creates.
pub mod tags {
    /// Ownership: ektool made this snapshot (value [`OWNER_VALUE`]).
    /// Retention and cleanup never touch snapshots without it unless the
    /// user adopts them explicitly.
    pub const OWNER: &str = "ektool:owner";
    /// The value of [`OWNER`].
    pub const OWNER_VALUE: &str = "ektool";
    /// The source volume: the lineage key.
    pub const VOLUME: &str = "ektool:volume";
    /// The instance the volume was attached to.
    pub const INSTANCE: &str = "ektool:instance";
    /// The device name the volume was attached as.
    pub const DEVICE: &str = "ektool:device";
    /// One id per instance per backup run: the snapshots taken together.
    pub const SET: &str = "ektool:set";
    /// The region the lineage started in.
    pub const ORIGIN_REGION: &str = "ektool:origin-region";
    /// When the backup was taken (RFC 3339, UTC).
    pub const CREATED: &str = "ektool:created";
    /// The retention policy the backup was made under.
    pub const POLICY: &str = "ektool:policy";
    /// For copies: the snapshot this one was copied from.
    pub const SOURCE_SNAPSHOT: &str = "ektool:source-snapshot";
    /// For copies: the region of [`SOURCE_SNAPSHOT`].
    pub const SOURCE_REGION: &str = "ektool:source-region";
    /// For copies: the point in time of the data (the source's start
    /// time; a copy's own start time is when the copy began).
    pub const SOURCE_TIME: &str = "ektool:source-time";
    /// For copies in a vault account: the account [`SOURCE_SNAPSHOT`]
    /// belongs to (a vault's lineages are per source account).
    pub const SOURCE_ACCOUNT: &str = "ektool:source-account";
    /// On a source snapshot while it is shared with a vault account for a
    /// copy: that account (written before the share, removed after the
    /// share is; a rerun finds shares a crash left behind by it).
    pub const SHARED_WITH: &str = "ektool:shared-with";
    /// For AMIs and their copies: the image this one was made from.
    pub const SOURCE_IMAGE: &str = "ektool:source-image";
    /// The root device name of the instance (for AMIs from snapshots).
    pub const ROOT_DEVICE: &str = "ektool:root-device";
    /// The instance's architecture (for AMIs from snapshots).
    pub const ARCHITECTURE: &str = "ektool:architecture";
    /// Any non-empty value keeps the snapshot forever (the seed's tag).
    pub const PRESERVE: &str = "preserve_snapshot";
}

/// The seed tool's JSON description (`{"Volume": …, "Time": …, …}`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SeedDescription {
    /// Source volume.
    pub volume: Option<String>,
    /// Source region.
    pub region: Option<String>,
    /// Device the volume was attached as.
    pub device: Option<String>,
    /// Instance id.
    pub instance: Option<String>,
    /// Instance type.
    #[serde(rename = "Type")]
    pub instance_type: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Root device name.
    #[serde(rename = "Root_dev_name")]
    pub root_dev_name: Option<String>,
    /// `YYYY-MM-DDTHH:MM:SS`, UTC without a zone suffix.
    pub time: Option<String>,
}

impl SeedDescription {
    /// Reads a description written by the seed tool; `None` for any other text.
    pub fn parse(description: &str) -> Option<Self> {
        let d = description.trim();
        if !d.starts_with('{') {
            return None;
        }
        serde_json::from_str(d).ok()
    }
}

/// The volume id EC2 gives snapshots made by `CopySnapshot`: not a volume.
pub const PLACEHOLDER_VOLUME: &str = "vol-ffffffff";

/// The lineage key of a snapshot (see the module docs for the order).
pub fn lineage_of(snapshot: &Snapshot) -> String {
    lineage_key(snapshot).into_owned()
}

/// [`lineage_of`], borrowing from the snapshot where it can (planning a
/// million snapshots should not allocate a million keys).
///
/// With a non-empty [`tags::SOURCE_ACCOUNT`] the key is `ACCOUNT/KEY`; a
/// key that already starts with `ACCOUNT/` (the volume tag of a copy made
/// of a vault copy, e.g. to another region of the vault) is not prefixed
/// twice.
pub fn lineage_key(snapshot: &Snapshot) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let key = own_lineage_key(snapshot);
    match snapshot
        .tags
        .get(tags::SOURCE_ACCOUNT)
        .filter(|a| !a.is_empty())
    {
        Some(account)
            if !key
                .strip_prefix(account)
                .is_some_and(|rest| rest.starts_with('/')) =>
        {
            Cow::Owned(format!("{account}/{key}"))
        }
        _ => key,
    }
}

/// The source account of a vault copy ([`tags::SOURCE_ACCOUNT`]), if it
/// names one.
pub fn source_account(snapshot: &Snapshot) -> Option<&str> {
    snapshot
        .tags
        .get(tags::SOURCE_ACCOUNT)
        .filter(|a| !a.is_empty())
}

/// The lineage key within its own account (no source-account prefix).
fn own_lineage_key(snapshot: &Snapshot) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    // The tag names the source volume of copies (whose own VolumeId is the
    // placeholder). On a snapshot EC2 says was taken of a real volume, a
    // tag naming another volume is not believed: anyone with
    // ec2:CreateTags could otherwise slip a snapshot into a lineage and
    // make trim delete that lineage's real newest.
    if let Some(v) = snapshot.tags.get(tags::VOLUME).filter(|v| !v.is_empty())
        && snapshot
            .volume_id
            .as_ref()
            .is_none_or(|own| own.as_str() == PLACEHOLDER_VOLUME || own.as_str() == v)
    {
        return Cow::Borrowed(v);
    }
    if let Some(v) = snapshot
        .description
        .as_deref()
        .and_then(SeedDescription::parse)
        .and_then(|d| d.volume)
    {
        return Cow::Owned(v);
    }
    match &snapshot.volume_id {
        Some(v) if v.as_str() != PLACEHOLDER_VOLUME => Cow::Borrowed(v.as_str()),
        // A copy: its source, when a tag names one, else itself. Never the
        // placeholder, which every copy in the region shares.
        _ => match snapshot
            .tags
            .get(tags::SOURCE_SNAPSHOT)
            .filter(|s| !s.is_empty())
        {
            Some(source) => Cow::Owned(format!("snapshot:{source}")),
            None => Cow::Owned(format!("snapshot:{}", snapshot.id)),
        },
    }
}

/// Whether ektool made the snapshot.
pub fn is_owned(snapshot: &Snapshot) -> bool {
    snapshot.tags.get(tags::OWNER) == Some(tags::OWNER_VALUE)
}

/// Whether the snapshot carries a non-empty `preserve_snapshot` tag.
pub fn is_preserved(snapshot: &Snapshot) -> bool {
    snapshot
        .tags
        .get(tags::PRESERVE)
        .is_some_and(|v| !v.trim().is_empty())
}

/// Whether the description names an AMI (`Created by CreateImage(i-…) for
/// ami-…`): a second line of defence next to `DescribeImages`, for AMIs
/// the account can see but does not own.
pub fn description_names_ami(snapshot: &Snapshot) -> bool {
    snapshot.description.as_deref().is_some_and(|d| {
        d.match_indices("ami-").any(|(i, m)| {
            let after = d.get(i + m.len()..).unwrap_or_default();
            let hex = after.bytes().take_while(u8::is_ascii_hexdigit).count();
            let before = d.get(..i).and_then(|b| b.chars().next_back());
            hex >= 8 && before.is_none_or(|c| !c.is_ascii_alphanumeric())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2kit::{SnapshotId, SnapshotState, VolumeId};

    fn snap(volume: &str) -> Snapshot {
        Snapshot::new(
            SnapshotId::from_api("snap-00000001"),
            Some(VolumeId::from_api(volume)),
            jiff::Timestamp::UNIX_EPOCH,
            SnapshotState::Completed,
        )
    }

    #[test]
    fn copies_never_share_the_placeholder_volume_as_a_lineage() {
        let mut a = snap("vol-ffffffff");
        a.id = SnapshotId::from_api("snap-0000000a");
        let mut b = snap("vol-ffffffff");
        b.id = SnapshotId::from_api("snap-0000000b");
        assert_eq!(lineage_of(&a), "snapshot:snap-0000000a");
        assert_eq!(lineage_of(&b), "snapshot:snap-0000000b");
        b.tags.insert(tags::SOURCE_SNAPSHOT, "snap-00000001");
        assert_eq!(lineage_of(&b), "snapshot:snap-00000001");
        b.tags.insert(tags::VOLUME, "vol-1234abcd");
        assert_eq!(lineage_of(&b), "vol-1234abcd");
    }

    /// M14: a snapshot of another volume tagged into a lineage stays out
    /// of it; copies (placeholder volume id) follow their tag.
    #[test]
    fn a_volume_tag_contradicting_the_snapshots_own_volume_is_not_believed() {
        let mut forged = snap("vol-0000000000000beef");
        forged.tags.insert(tags::VOLUME, "vol-0000000000000prod");
        assert_eq!(lineage_of(&forged), "vol-0000000000000beef");
        let mut own = snap("vol-0000000000000prod");
        own.tags.insert(tags::VOLUME, "vol-0000000000000prod");
        assert_eq!(lineage_of(&own), "vol-0000000000000prod");
        let mut copy = snap(PLACEHOLDER_VOLUME);
        copy.tags.insert(tags::VOLUME, "vol-0000000000000prod");
        assert_eq!(lineage_of(&copy), "vol-0000000000000prod");
    }

    /// Vault copies: lineages are per source account, never prefixed twice.
    #[test]
    fn a_vault_copys_lineage_is_per_source_account() {
        let mut a = snap(PLACEHOLDER_VOLUME);
        a.tags.insert(tags::VOLUME, "db");
        a.tags.insert(tags::SOURCE_ACCOUNT, "111111111111");
        let mut b = a.clone();
        b.tags.insert(tags::SOURCE_ACCOUNT, "222222222222");
        assert_eq!(lineage_of(&a), "111111111111/db");
        assert_eq!(lineage_of(&b), "222222222222/db");
        assert_eq!(source_account(&b), Some("222222222222"));
        // A copy of a vault copy (its volume tag is the prefixed key).
        let mut c = a.clone();
        c.tags.insert(tags::VOLUME, "111111111111/db");
        assert_eq!(lineage_of(&c), "111111111111/db");
        // Another account's prefix is not this account's.
        c.tags.insert(tags::VOLUME, "1111111111112/db");
        assert_eq!(lineage_of(&c), "111111111111/1111111111112/db");
        // Without the tag (or with an empty one): unchanged.
        a.tags.insert(tags::SOURCE_ACCOUNT, "");
        assert_eq!(lineage_of(&a), "db");
        assert_eq!(source_account(&a), None);
        let mut own = snap("vol-00000000000000001");
        own.tags.insert(tags::SOURCE_ACCOUNT, "111111111111");
        assert_eq!(lineage_of(&own), "111111111111/vol-00000000000000001");
    }

    #[test]
    fn lineage_prefers_the_tag_then_the_seed_description_then_the_volume() {
        let mut s = snap("vol-ffffffff");
        assert_eq!(lineage_of(&s), "snapshot:snap-00000001");
        s.description = Some(
            r#"{"Volume": "vol-1234abcd", "Region": "us-east-1", "Time": "2013-03-20T02:00:00"}"#
                .into(),
        );
        assert_eq!(lineage_of(&s), "vol-1234abcd");
        s.tags.insert(tags::VOLUME, "vol-aaaabbbb");
        assert_eq!(lineage_of(&s), "vol-aaaabbbb");
        let mut seed = snap("vol-1234abcd");
        seed.description = s.description.clone();
        seed.tags.insert(tags::VOLUME, "vol-1234abcd");
        assert_eq!(lineage_of(&seed), "vol-1234abcd");
    }

    #[test]
    fn seed_description_round_trip() {
        let d = SeedDescription::parse(
            r#"{"Volume": "vol-1", "Region": "eu-west-1", "Device": "/dev/sdf", "Instance": "i-1", "Type": "m1.small", "Arch": "x86_64", "Root_dev_name": "/dev/sda1", "Time": "2012-01-01T00:00:00"}"#,
        )
        .unwrap();
        assert_eq!(d.device.as_deref(), Some("/dev/sdf"));
        assert_eq!(d.root_dev_name.as_deref(), Some("/dev/sda1"));
        assert_eq!(d.instance_type.as_deref(), Some("m1.small"));
        assert!(SeedDescription::parse("Created by CreateImage").is_none());
    }

    #[test]
    fn descriptions_naming_an_ami() {
        let mut s = snap("vol-1");
        s.description = Some("Created by CreateImage(i-0abc) for ami-0123456789abcdef0".into());
        assert!(description_names_ami(&s));
        s.description = Some("salami-12345678 and ami-xyz".into());
        assert!(!description_names_ami(&s));
    }

    #[test]
    fn preserve_needs_a_non_empty_value() {
        let mut s = snap("vol-1");
        assert!(!is_preserved(&s));
        s.tags.insert(tags::PRESERVE, " ");
        assert!(!is_preserved(&s));
        s.tags.insert(tags::PRESERVE, "yes");
        assert!(is_preserved(&s));
    }
}
