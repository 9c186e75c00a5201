//! Release resolution and the rules applied before anything reaches a
//! host, against a real origin repository.

use deploykit::environment::{LayoutKind, VersionPattern};
use deploykit::git::{GitError, LocalRepo};
use deploykit::{Bump, RefSpec};

use crate::support::{Fixture, git};

#[test]
fn resolves_tags_branches_commits_and_latest_tag() {
    let f = Fixture::new(1);
    let c1 = f.commit("one");
    f.tag("v1.9.0");
    let c2 = f.commit("two");
    f.tag("v1.10.0");
    let c3 = f.commit("three");
    let repo = LocalRepo::open(&f.work).unwrap();
    let env = f.env(LayoutKind::Ab);
    let r = repo
        .release_for(&RefSpec::parse("v1.9.0"), &env, "staging")
        .unwrap();
    assert_eq!(
        (r.commit.as_str(), r.tag.as_deref()),
        (c1.as_str(), Some("v1.9.0"))
    );
    let r = repo
        .release_for(&RefSpec::LatestTag, &env, "staging")
        .unwrap();
    assert_eq!(
        (r.commit.as_str(), r.describe.as_str()),
        (c2.as_str(), "v1.10.0")
    );
    let r = repo
        .release_for(&RefSpec::Default, &env, "staging")
        .unwrap();
    assert_eq!(r.commit, c3, "default: the branch head");
    let r = repo
        .release_for(&RefSpec::parse(&c2[..10]), &env, "staging")
        .unwrap();
    assert_eq!(
        r.tag.as_deref(),
        Some("v1.10.0"),
        "a commit with a release tag"
    );
    assert!(matches!(
        repo.release_for(&RefSpec::parse("nope"), &env, "staging"),
        Err(GitError::UnknownRef(_))
    ));
}

#[test]
fn production_refuses_untagged_and_badly_tagged_releases_unless_overridden() {
    let f = Fixture::new(1);
    f.commit("one");
    f.tag("release-7");
    let repo = LocalRepo::open(&f.work).unwrap();
    let mut env = f.env(LayoutKind::Ab);
    env.require_tag = true;
    for what in ["main", "release-7"] {
        let err = repo
            .release_for(&RefSpec::parse(what), &env, "production")
            .unwrap_err();
        assert!(matches!(err, GitError::TagRequired { .. }), "{what}: {err}");
        assert!(err.to_string().contains(r"^v\d+\.\d+\.\d+$"), "{err}");
    }
    // With no release tag at all, the default (latest tag) has nothing.
    assert!(matches!(
        repo.release_for(&RefSpec::Default, &env, "production"),
        Err(GitError::NoReleaseTag(_))
    ));
    repo.release_with(&RefSpec::parse("main"), &env, "production", true)
        .unwrap();
    f.tag("v2.0.0");
    let r = repo
        .release_for(&RefSpec::Default, &env, "production")
        .unwrap();
    assert_eq!(r.tag.as_deref(), Some("v2.0.0"));
}

#[test]
fn unpushed_commits_and_dirty_trees_are_refused_and_the_working_copy_is_untouched() {
    let f = Fixture::new(1);
    let pushed = f.commit("pushed");
    let local = f.commit_local("local only");
    let repo = LocalRepo::open(&f.work).unwrap();
    let env = f.env(LayoutKind::Ab);
    let err = repo
        .release_for(&RefSpec::Head, &env, "staging")
        .unwrap_err();
    assert!(matches!(err, GitError::NotPushed { .. }), "{err}");
    assert!(err.to_string().contains(&local[..12]), "{err}");
    // Someone else pushes a branch containing it plus a commit not fetched
    // here: ls-remote sees a tip this clone lacks, fetches, finds it.
    let other = f.dir.path().join("other");
    git(
        f.dir.path(),
        &["clone", "--quiet", f.origin.to_str().unwrap(), "other"],
    );
    git(
        &other,
        &["fetch", "--quiet", f.work.to_str().unwrap(), "main"],
    );
    git(&other, &["checkout", "--quiet", "FETCH_HEAD"]);
    std::fs::write(other.join("x"), "x").unwrap();
    git(&other, &["add", "x"]);
    git(
        &other,
        &[
            "-c",
            "user.name=O",
            "-c",
            "user.email=o@x",
            "commit",
            "--quiet",
            "-m",
            "x",
        ],
    );
    git(
        &other,
        &["push", "--quiet", "origin", "HEAD:refs/heads/feature"],
    );
    repo.ensure_pushed("origin", &local).unwrap();
    repo.ensure_pushed("origin", &pushed).unwrap();
    // Dirty tracked file: HEAD is refused.
    std::fs::write(f.work.join("app.txt"), "edited\n").unwrap();
    let err = repo
        .release_for(&RefSpec::Head, &env, "staging")
        .unwrap_err();
    assert!(matches!(err, GitError::Dirty(_)), "{err}");
    // Still on main, with the edit: nothing was checked out or reset.
    assert_eq!(git(&f.work, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(
        std::fs::read_to_string(f.work.join("app.txt")).unwrap(),
        "edited\n"
    );
    // Untracked files do not count.
    git(&f.work, &["checkout", "--quiet", "--", "app.txt"]);
    std::fs::write(f.work.join("untracked.tmp"), "x").unwrap();
    repo.release_for(&RefSpec::Head, &env, "staging").unwrap();
    assert!(!f.local(0, "").exists(), "nothing reached a host");
}

#[test]
fn next_patch_creates_and_pushes_an_annotated_tag_and_reports_rejections() {
    let f = Fixture::new(1);
    let c = f.commit("one");
    f.tag("v1.2.3");
    let c2 = f.commit("two");
    let repo = LocalRepo::open(&f.work).unwrap();
    let pattern = VersionPattern::default();
    assert_eq!(repo.next_tag(&Bump::Patch, &pattern).unwrap(), "v1.2.4");
    assert_eq!(repo.next_tag(&Bump::Minor, &pattern).unwrap(), "v1.3.0");
    assert_eq!(repo.next_tag(&Bump::Major, &pattern).unwrap(), "v2.0.0");
    assert!(repo.next_tag(&Bump::parse("1.0"), &pattern).is_err());
    let tag = repo
        .create_tag("v1.2.4", &c2, "release v1.2.4", false)
        .unwrap();
    assert!(!tag.existed);
    repo.push_tag("origin", "v1.2.4").unwrap();
    let remote = git(&f.work, &["ls-remote", "--tags", "origin", "v1.2.4^{}"]);
    assert!(remote.starts_with(&c2), "{remote}");
    assert_eq!(
        git(&f.work, &["cat-file", "-t", "v1.2.4"]),
        "tag",
        "annotated"
    );
    // Same tag, same commit: fine. Another commit: refused.
    assert!(
        repo.create_tag("v1.2.4", &c2, "again", false)
            .unwrap()
            .existed
    );
    assert!(matches!(
        repo.create_tag("v1.2.4", &c, "moved", false),
        Err(GitError::TagExists { .. })
    ));
    // The remote has v1.2.5 at another commit: the push is rejected per ref.
    let other = f.dir.path().join("other");
    git(
        f.dir.path(),
        &["clone", "--quiet", f.origin.to_str().unwrap(), "other"],
    );
    git(&other, &["tag", "v1.2.5", &c]);
    git(&other, &["push", "--quiet", "origin", "v1.2.5"]);
    repo.create_tag("v1.2.5", &c2, "mine", false).unwrap();
    let err = repo.push_tag("origin", "v1.2.5").unwrap_err();
    assert!(matches!(err, GitError::PushRejected { .. }), "{err}");
}

/// `sign_tags`: the tag is made by git with the developer's signing setup
/// (here SSH signing with a throwaway key) and verifies.
#[test]
fn signed_tags_use_the_developers_signing_setup_and_verify() {
    let f = Fixture::new(1);
    let c = f.commit("signed");
    let key = f.dir.path().join("signing_key");
    let out = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "dev@example.com",
            "-f",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let allowed = f.dir.path().join("allowed_signers");
    std::fs::write(&allowed, format!("dev@example.com {public}")).unwrap();
    for (k, v) in [
        ("gpg.format", "ssh"),
        // Not whatever the machine's global config names.
        ("gpg.ssh.program", "ssh-keygen"),
        ("user.signingkey", key.to_str().unwrap()),
        ("gpg.ssh.allowedSignersFile", allowed.to_str().unwrap()),
    ] {
        git(&f.work, &["config", k, v]);
    }
    let repo = LocalRepo::open(&f.work).unwrap();
    let tag = repo
        .create_tag("v3.0.0", &c, "release v3.0.0", true)
        .unwrap();
    assert!(!tag.existed);
    let body = git(&f.work, &["cat-file", "tag", "v3.0.0"]);
    assert!(body.contains("-----BEGIN SSH SIGNATURE-----"), "{body}");
    git(&f.work, &["tag", "-v", "v3.0.0"]);
    repo.push_tag("origin", "v3.0.0").unwrap();
    let remote = git(&f.work, &["ls-remote", "--tags", "origin", "v3.0.0^{}"]);
    assert!(remote.starts_with(&c), "{remote}");
    // Without a signing setup git refuses, and no tag is left behind.
    git(&f.work, &["config", "user.signingkey", "/nonexistent/key"]);
    assert!(repo.create_tag("v3.0.1", &c, "release", true).is_err());
    assert!(git(&f.work, &["tag", "-l", "v3.0.1"]).is_empty());
}

/// With `require_tag`, the release tag must be on the remote and name the
/// same commit there: a tag made only in this clone, or moved here, is
/// refused (protected tags live on the server).
#[test]
fn require_tag_checks_the_tag_on_the_remote() {
    let f = Fixture::new(1);
    let c1 = f.commit("one");
    let repo = LocalRepo::open(&f.work).unwrap();
    let mut env = f.env(LayoutKind::Ab);
    env.require_tag = true;
    git(&f.work, &["tag", "-a", "-m", "v1.0.0", "v1.0.0"]);
    for spec in [RefSpec::parse("v1.0.0"), RefSpec::Default] {
        let err = repo.release_for(&spec, &env, "production").unwrap_err();
        assert!(
            matches!(err, GitError::TagNotPushed { .. }),
            "{spec}: {err}"
        );
    }
    git(&f.work, &["push", "--quiet", "origin", "v1.0.0"]);
    let r = repo
        .release_for(&RefSpec::parse("v1.0.0"), &env, "production")
        .unwrap();
    assert_eq!(r.commit, c1);
    // Moved here to a pushed commit of main; the remote still says c1.
    let c2 = f.commit("two");
    git(&f.work, &["tag", "-f", "-a", "-m", "moved", "v1.0.0", &c2]);
    let err = repo
        .release_for(&RefSpec::parse("v1.0.0"), &env, "production")
        .unwrap_err();
    assert!(matches!(err, GitError::TagMoved { .. }), "{err}");
    assert!(err.to_string().contains(&c1[..12]), "{err}");
    // A lightweight tag pushed as is counts too.
    git(&f.work, &["tag", "v1.1.0", &c2]);
    git(&f.work, &["push", "--quiet", "origin", "v1.1.0"]);
    let r = repo
        .release_for(&RefSpec::parse("v1.1.0"), &env, "production")
        .unwrap();
    assert_eq!(r.commit, c2);
}
