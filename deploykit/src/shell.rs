//! Small helpers for the shell scripts sent to hosts.

pub(crate) use ec2kit::remote::quote as q;

/// The last `max` bytes of a command's output, as text, for error messages.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// The release directory name out of what `readlink current` printed:
/// `releases/<name>` (relative, as deploykit writes it) or an absolute
/// path ending in `/releases/<name>` (older tools).
pub(crate) fn release_name_of_link(target: &str) -> Option<String> {
    let t = target.trim().trim_end_matches('/');
    let (parent, name) = t.rsplit_once('/')?;
    let parent_ok = parent == "releases" || parent.ends_with("/releases");
    (parent_ok && !name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert_eq!(release_name_of_link("releases/a\n").as_deref(), Some("a"));
        assert_eq!(
            release_name_of_link("/srv/app/releases/20240101000000").as_deref(),
            Some("20240101000000")
        );
        assert_eq!(release_name_of_link("elsewhere/a"), None);
        assert_eq!(release_name_of_link(""), None);
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail(b"  abc  ", 10), "abc");
        assert_eq!(tail(b"0123456789", 4), "…6789");
    }
}
