//! EC2 tags.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A resource's tags, ordered by key so output and plans are stable.
// Arc<str>: a million-snapshot inventory repeats the same few keys and
// values; deserialising shares them instead of allocating each (see
// `Interner`), and clones are cheap. A sorted slice, not a BTreeMap: a
// resource has a handful of tags, and a BTreeMap's node holds room for
// eleven. Shared: the snapshots of a lineage usually carry the same tags,
// and deserialising gives them one copy (see `TagsVisitor`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags(Arc<[(Arc<str>, Arc<str>)]>);

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl Tags {
    /// No tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| &*self.0[i].1)
    }

    /// Where `key` is (`Ok`) or would go (`Err`) in the sorted entries.
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    /// Sets `key` to `value`, returning the old value. Copies the entries
    /// (they may be shared): tags are built once and read many times.
    fn set(&mut self, key: Arc<str>, value: Arc<str>) -> Option<Arc<str>> {
        let mut entries = self.0.to_vec();
        let old = set_entry(&mut entries, key, value);
        self.0 = entries.into();
        old
    }

    /// Whether `key` is set (with any value).
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.set(key.into().into(), value.into().into())
            .map(|old| old.to_string())
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.find(key).ok()?;
        let mut entries = self.0.to_vec();
        let (_, old) = entries.remove(i);
        self.0 = entries.into();
        Some(old.to_string())
    }

    /// Builder form of [`Tags::insert`].
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Whether the tags carry `tag` (key and value).
    pub fn matches(&self, tag: &Tag) -> bool {
        self.get(&tag.key) == Some(tag.value.as_str())
    }

    /// Copies the user tags of `other` into `self`, without overwriting keys
    /// `self` already has and without AWS-reserved `aws:*` keys (EC2 rejects
    /// them on create, and the seed learnt this the hard way with
    /// `aws:autoscaling:groupName`).
    pub fn merge_user_tags(&mut self, other: &Tags) {
        let mut entries = self.0.to_vec();
        for (k, v) in other.0.iter() {
            if !is_reserved_key(k) && !self.contains_key(k) {
                set_entry(&mut entries, k.clone(), v.clone());
            }
        }
        self.0 = entries.into();
    }

    /// Iterates over `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The number of tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether a tag key is reserved by AWS (`aws:` prefix, any case).
pub fn is_reserved_key(key: &str) -> bool {
    // Bytes, not `&key[..4]`: tag keys may hold any Unicode letter, and a
    // 4th byte inside a character (`部署`) must not panic.
    key.as_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"aws:"))
}

impl FromIterator<(String, String)> for Tags {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut entries = Vec::new();
        for (k, v) in iter {
            set_entry(&mut entries, k.into(), v.into());
        }
        Self(entries.into())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TagsVisitor)
    }
}

struct TagsVisitor;

impl<'de> serde::de::Visitor<'de> for TagsVisitor {
    type Value = Tags;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of tag keys to values")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Tags, A::Error> {
        // A scratch vector per thread (taken, so a nested read cannot
        // find it borrowed): no allocation for tags seen before.
        let mut entries = SCRATCH.with(|cell| cell.take());
        entries.clear();
        while let Some((key, slot)) = map.next_key_seed(Interned(None))? {
            let (value, _) = map.next_value_seed(Interned(Some(slot)))?;
            set_entry(&mut entries, key, value);
        }
        // The same tags as the last resource this thread read (the
        // previous snapshot of a lineage): share them.
        let tags = LAST_TAGS.with(|cell| {
            let mut last = cell.borrow_mut();
            if *last.0 != *entries {
                last.0 = entries.as_slice().into();
            }
            last.clone()
        });
        entries.clear();
        SCRATCH.with(|cell| cell.replace(entries));
        Ok(tags)
    }
}

/// Sets `key` to `value` in sorted entries, returning the old value.
fn set_entry(
    entries: &mut Vec<(Arc<str>, Arc<str>)>,
    key: Arc<str>,
    value: Arc<str>,
) -> Option<Arc<str>> {
    match entries.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(i) => Some(std::mem::replace(&mut entries[i].1, value)),
        Err(i) => {
            entries.insert(i, (key, value));
            None
        }
    }
}

thread_local! {
    static LAST_TAGS: RefCell<Tags> = RefCell::new(Tags::default());
    static SCRATCH: RefCell<Vec<(Arc<str>, Arc<str>)>> = const { RefCell::new(Vec::new()) };
    static INTERNER: RefCell<Vec<(Arc<str>, Arc<str>)>> = const { RefCell::new(Vec::new()) };
}

/// Deserialises a tag key (`Interned(None)`) or the value of the key in
/// interner slot `n` (`Interned(Some(n))`), sharing strings seen before.
///
/// The interner holds, per thread, the keys seen so far (up to a bound)
/// and the last value seen for each. Inventories list a lineage's
/// snapshots together, so "same value as last time" catches most repeats
/// at the cost of one string comparison.
struct Interned(Option<usize>);

const MAX_INTERNED_KEYS: usize = 64;

impl<'de> serde::de::DeserializeSeed<'de> for Interned {
    type Value = (Arc<str>, usize);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for Interned {
    type Value = (Arc<str>, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(INTERNER.with(|cell| {
            let mut slots = cell.borrow_mut();
            match self.0 {
                // A value: share the key's last value when it repeats.
                Some(n) => match slots.get_mut(n) {
                    Some((_, last)) => {
                        if &**last != v {
                            *last = v.into();
                        }
                        (last.clone(), n)
                    }
                    None => (v.into(), n),
                },
                // A key: share it, or remember it while there is room.
                None => match slots.iter().position(|(k, _)| &**k == v) {
                    Some(n) => (slots[n].0.clone(), n),
                    None => {
                        let key: Arc<str> = v.into();
                        if slots.len() < MAX_INTERNED_KEYS {
                            slots.push((key.clone(), "".into()));
                            (key, slots.len() - 1)
                        } else {
                            // No slot: its value is allocated as it comes.
                            (key, usize::MAX)
                        }
                    }
                },
            }
        }))
    }
}

/// One `key=value` tag, as used to select instances and snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tag {
    /// The tag key.
    pub key: String,
    /// The tag value.
    pub value: String,
}

impl Tag {
    /// A tag from its key and value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A `key=value` string that could not be read as a tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tag {0:?}: expected KEY=VALUE with a non-empty key")]
pub struct InvalidTag(pub String);

impl FromStr for Tag {
    type Err = InvalidTag;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok(Tag::new(k.trim(), v.trim())),
            _ => Err(InvalidTag(s.to_owned())),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value() {
        assert_eq!(
            "Earmarking=production".parse::<Tag>().unwrap(),
            Tag::new("Earmarking", "production")
        );
        assert_eq!("k=".parse::<Tag>().unwrap(), Tag::new("k", ""));
        assert_eq!("k=a=b".parse::<Tag>().unwrap(), Tag::new("k", "a=b"));
        assert!("=v".parse::<Tag>().is_err());
        assert!("novalue".parse::<Tag>().is_err());
    }

    #[test]
    fn merge_skips_reserved_and_keeps_own_values() {
        let mut mine = Tags::new().with("Name", "mine");
        let theirs = Tags::new()
            .with("Name", "theirs")
            .with("aws:autoscaling:groupName", "g")
            .with("AWS:x", "y")
            .with("team", "web");
        mine.merge_user_tags(&theirs);
        assert_eq!(mine.get("Name"), Some("mine"));
        assert_eq!(mine.get("team"), Some("web"));
        assert!(!mine.contains_key("aws:autoscaling:groupName"));
        assert!(!mine.contains_key("AWS:x"));
    }

    #[test]
    fn deserialised_tags_share_repeated_strings() {
        let a: Tags = serde_json::from_str(r#"{"Name":"web","team":"ops"}"#).unwrap();
        let b: Tags = serde_json::from_str(r#"{"Name":"web","team":"dev"}"#).unwrap();
        assert_eq!(b.get("team"), Some("dev"));
        assert_eq!(a.get("team"), Some("ops"));
        let (ka, va) = a.0.first().unwrap();
        let (kb, vb) = b.0.first().unwrap();
        assert!(Arc::ptr_eq(ka, kb) && Arc::ptr_eq(va, vb));
        // The same tags twice in a row are one copy; other tags in between
        // or after are their own, and changing a shared set changes one.
        let c: Tags = serde_json::from_str(r#"{"team":"dev","Name":"web"}"#).unwrap();
        assert!(Arc::ptr_eq(&b.0, &c.0));
        assert!(!Arc::ptr_eq(&a.0, &b.0));
        let mut d = c.clone();
        d.insert("team", "ops");
        assert_eq!((c.get("team"), d.get("team")), (Some("dev"), Some("ops")));
        assert_eq!(d, a);
        // Escapes and many distinct keys still read exactly.
        let many: String = (0..100)
            .map(|i| format!(r#""k{i}":"v\"{i}""#))
            .collect::<Vec<_>>()
            .join(",");
        let t: Tags = serde_json::from_str(&format!("{{{many}}}")).unwrap();
        assert_eq!(t.len(), 100);
        assert_eq!(t.get("k99"), Some("v\"99"));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"Name":"web","team":"ops"}"#
        );
    }

    #[test]
    fn multi_byte_keys_are_not_reserved() {
        for key in ["部署", "成本中心", "Env€", "abcé", "aws", "aw", "", "aws:"] {
            assert_eq!(is_reserved_key(key), key == "aws:", "{key}");
        }
        assert!(is_reserved_key("AWS:部署"));
    }

    proptest::proptest! {
        /// Every tag helper takes any Unicode key and value: no panic, and
        /// the same answers as a char-wise reference.
        #[test]
        fn every_tag_helper_takes_any_unicode(
            key in "\\PC{0,12}",
            value in "\\PC{0,12}",
            prefix in proptest::sample::select(vec!["", "aws:", "AwS:", "ektool:", "部"]),
        ) {
            let key = format!("{prefix}{key}");
            // Char-wise, independent of the byte-wise implementation.
            let reference = key.chars().take(4).collect::<String>().eq_ignore_ascii_case("aws:");
            proptest::prop_assert_eq!(is_reserved_key(&key), reference);

            let theirs = Tags::new().with(key.clone(), value.clone()).with("部署", "本番");
            let mut mine = Tags::new();
            mine.merge_user_tags(&theirs);
            proptest::prop_assert_eq!(mine.contains_key(&key), !reference);
            proptest::prop_assert_eq!(mine.get("部署"), Some("本番"));

            let text = format!("{key}={value}");
            match text.parse::<Tag>() {
                Ok(t) => {
                    proptest::prop_assert_eq!(t.key.as_str(), key.split('=').next().unwrap_or_default().trim());
                    let _ = t.to_string();
                    let _ = Tags::new().with(t.key.clone(), t.value.clone()).matches(&t);
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }

            let json = serde_json::to_string(&theirs).unwrap();
            let back: Tags = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back, theirs);
        }

        /// Arbitrary bytes as `KEY=VALUE` text and as a JSON tag map: an
        /// answer or an error, never a panic.
        #[test]
        fn tag_parsers_take_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(t) = text.parse::<Tag>() {
                proptest::prop_assert!(!t.key.is_empty());
                let _ = is_reserved_key(&t.key);
            }
            if let Ok(tags) = serde_json::from_slice::<Tags>(&bytes) {
                for (k, _) in tags.iter() {
                    let _ = is_reserved_key(k);
                }
            }
        }
    }
}
