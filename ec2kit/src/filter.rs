//! Server-side filters for `Describe*` calls.

use serde::{Deserialize, Serialize};

use crate::Tag;

/// One EC2 `Filter`: a name and the values any of which may match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Filter {
    /// Filter name, e.g. `tag:Earmarking`, `volume-id`, `status`.
    pub name: String,
    /// Accepted values (OR-ed).
    pub values: Vec<String>,
}

impl Filter {
    /// A filter from a name and values.
    pub fn new<I, S>(name: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// Resources carrying `key=value`.
    pub fn tag(tag: &Tag) -> Self {
        Self::new(format!("tag:{}", tag.key), [tag.value.clone()])
    }

    /// Resources carrying `key` with any value.
    pub fn tag_key(key: impl Into<String>) -> Self {
        Self::new("tag-key", [key.into()])
    }
}
