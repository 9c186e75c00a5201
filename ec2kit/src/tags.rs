//! EC2 tags.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A resource's tags, ordered by key so output and plans are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    /// No tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether `key` is set (with any value).
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
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
        for (k, v) in other.iter() {
            if !is_reserved_key(k) && !self.0.contains_key(k) {
                self.0.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    /// Iterates over `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
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
    key.len() >= 4 && key[..4].eq_ignore_ascii_case("aws:")
}

impl FromIterator<(String, String)> for Tags {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
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
}
