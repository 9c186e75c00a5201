//! Validated EC2 resource ids.
//!
//! Ids are checked when they are parsed, so a typo is rejected before any
//! API call is made (the seed tools sent whatever they were given).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use compact_str::CompactString;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A resource id that did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}: expected {prefix}- followed by 8 or 17 hex digits")]
pub struct InvalidId {
    /// What kind of id was expected ("snapshot", "volume", ...).
    pub kind: &'static str,
    /// The prefix such ids start with.
    pub prefix: &'static str,
    /// The rejected input (as much of it as prints in 40 bytes, then `…`:
    /// an error line never quotes megabytes back).
    pub value: String,
}

/// As much of `value` as prints (escaped, as the error quotes it) in 40
/// bytes, for [`InvalidId::value`]: control and wide characters take more
/// room than one.
fn shown(value: &str) -> String {
    const BUDGET: usize = 40;
    let mut used = 0;
    let mut s = String::new();
    for c in value.chars() {
        let width: usize = c.escape_debug().map(char::len_utf8).sum();
        if used + width > BUDGET {
            s.push('…');
            return s;
        }
        used += width;
        s.push(c);
    }
    s
}

fn valid(prefix: &str, value: &str) -> bool {
    let Some(rest) = value.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    // Real ids are 8 (legacy) or 17 hex digits; moto and some tools produce
    // other lengths between the two, so accept 8..=17 lowercase hex.
    (8..=17).contains(&rest.len())
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Deserialises a string straight into an `Arc<str>` (one allocation;
/// going through `String` costs two), shared with the last one this
/// thread read in the same slot when they are equal: an inventory repeats a
/// volume id or a region in every snapshot of a lineage.
pub(crate) struct RecentArcStr(pub(crate) usize);

/// Slots of [`RecentArcStr`] (one per kind of repeated value).
pub(crate) const RECENT_SLOTS: usize = 4;

thread_local! {
    static RECENT: std::cell::RefCell<[Option<Arc<str>>; RECENT_SLOTS]> =
        const { std::cell::RefCell::new([None, None, None, None]) };
}

impl serde::de::Visitor<'_> for RecentArcStr {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RECENT.with(|cell| {
            let mut recent = cell.borrow_mut();
            match recent.get_mut(self.0) {
                Some(Some(last)) if &**last == v => last.clone(),
                Some(slot) => slot.insert(Arc::from(v)).clone(),
                None => Arc::from(v),
            }
        }))
    }
}

/// Deserialises a string into a [`CompactString`]: ids fit in its 24
/// bytes, so a million snapshot ids take no allocation at all.
pub(crate) struct InlineStr;

impl serde::de::Visitor<'_> for InlineStr {
    type Value = CompactString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(CompactString::new(v))
    }
}

macro_rules! resource_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal, $storage:ty, $visitor:expr) => {
        $(#[$doc])*
        // Ids are cloned into every plan line; a clone must not allocate:
        // ids repeated across an inventory (instances, volumes) share an
        // `Arc<str>`, ids of their own (snapshots, AMIs) are stored inline.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($storage);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Parses and validates an id.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                if valid($prefix, value) {
                    Ok(Self(value.into()))
                } else {
                    Err(InvalidId { kind: $kind, prefix: $prefix, value: shown(value) })
                }
            }

            /// Wraps an id that came from the EC2 API itself, without validation.
            ///
            /// Only adapters should use this: the API is the authority on its
            /// own ids, and rejecting one it returned would hide the resource.
            pub fn from_api(value: impl AsRef<str>) -> Self {
                Self(value.as_ref().into())
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        // Deserialisation does not validate: inventories written by
        // `snap list` hold ids the API returned, which are authoritative.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str($visitor).map(Self)
            }
        }
    };
}

resource_id!(
    /// An EC2 instance id (`i-…`).
    InstanceId, "i", "instance", Arc<str>, RecentArcStr(1)
);
resource_id!(
    /// An EBS volume id (`vol-…`).
    VolumeId, "vol", "volume", Arc<str>, RecentArcStr(2)
);
resource_id!(
    /// An EBS snapshot id (`snap-…`).
    SnapshotId, "snap", "snapshot", CompactString, InlineStr
);
resource_id!(
    /// An AMI id (`ami-…`).
    ImageId, "ami", "image", CompactString, InlineStr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_short_and_long_ids() {
        assert!(SnapshotId::parse("snap-0123abcd").is_ok());
        assert!(SnapshotId::parse("snap-0123456789abcdef0").is_ok());
        assert!(InstanceId::parse("i-0123456789abcdef0").is_ok());
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "snap",
            "snap-",
            "snap-xyz12345",
            "vol-0123abcd",
            "snap-0123ABCD",
            "snap-0123abcd0123abcd01",
        ] {
            let err = SnapshotId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "snapshot");
            assert_eq!(err.value, bad);
        }
    }

    proptest::proptest! {
        /// Any input: no panic; an accepted id is `prefix-` and 8 to 17
        /// lowercase hex digits and reads back as itself; a refusal is one
        /// short line.
        #[test]
        fn any_text_parses_or_is_refused_briefly(
            text in "\\PC{0,64}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            long in 0usize..3,
        ) {
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            let huge = "snap-".to_owned() + &"ab".repeat(long * 100_000);
            for t in [&text, &lossy, &format!("snap-{text}"), &huge] {
                match SnapshotId::parse(t) {
                    Ok(id) => {
                        proptest::prop_assert_eq!(id.as_str(), t.as_str());
                        let hex = t.strip_prefix("snap-").unwrap_or_default();
                        proptest::prop_assert!((8..=17).contains(&hex.len()));
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        proptest::prop_assert!(msg.len() < 200 && !msg.contains('\n'), "{}", msg);
                    }
                }
                let _ = VolumeId::parse(t);
                let _ = InstanceId::parse(t);
                let _ = ImageId::parse(t);
            }
        }
    }

    #[test]
    fn error_message_names_the_expected_shape() {
        let err = VolumeId::parse("snap-0123abcd").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid volume id \"snap-0123abcd\": expected vol- followed by 8 or 17 hex digits"
        );
    }
}
