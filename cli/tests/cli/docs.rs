//! The documentation (README.md and docs/*.md) against the real thing:
//! every relative link leads to a file that exists (and its `#anchor` to a
//! heading there), every `ektool <command>` it names is a command of this
//! binary, and every TOML example is a config file `ektool` accepts.
//! No services needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::harness::Ektool;

#[test]
fn docs_links_commands_and_config_examples_are_real() {
    let pages = pages();
    let commands = commands();
    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    for page in &pages {
        for (line, target) in page.links() {
            if let Err(why) = check_link(page, &target, &pages) {
                problems.push(format!("{}:{line}: link ({target}): {why}", page.name));
            }
        }
        for (line, code) in page.code() {
            for mention in mentions(&code) {
                match resolve(&mention, &commands) {
                    Ok(paths) => named.extend(paths),
                    Err(why) => problems.push(format!("{}:{line}: {why}", page.name)),
                }
            }
        }
    }
    // What the check above accepts, run for real: `ektool <command> --help`.
    for path in &named {
        let args: Vec<&str> = path.split(' ').chain(["--help"]).collect();
        let out = Ektool::new().args(&args).run();
        if out.code != Some(0) {
            problems.push(format!("`ektool {path} --help` exits {:?}", out.code));
        }
    }
    // Each page's TOML examples are config files `ektool config` accepts.
    let dir = ektool_tests::tempdir();
    for page in &pages {
        for (n, (line, toml)) in page.blocks("toml").into_iter().enumerate() {
            let file = dir
                .path()
                .join(format!("{}-{n}.toml", page.name.replace('/', "-")));
            std::fs::write(&file, toml).unwrap();
            let out = Ektool::new()
                .args(&["--config", file.to_str().unwrap(), "config"])
                .run();
            if out.code != Some(0) {
                problems.push(format!(
                    "{}:{line}: TOML example is not a valid config: {}",
                    page.name,
                    out.stderr.trim()
                ));
            }
        }
    }
    assert!(
        named.len() > 20,
        "the docs name only {} commands: {named:?}",
        named.len()
    );
    assert!(
        problems.is_empty(),
        "the docs do not match the code:\n{}",
        problems.join("\n")
    );
}

/// One Markdown file of the documentation.
struct Page {
    /// Relative to the repository, e.g. `docs/cli.md`.
    name: String,
    path: PathBuf,
    text: String,
}

/// One line of a page.
struct Line<'a> {
    /// 1-based.
    n: usize,
    /// The fenced block it lies in: its number and info string.
    fence: Option<(usize, &'a str)>,
    text: &'a str,
}

/// README.md and every docs/*.md.
fn pages() -> Vec<Page> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut names = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("a docs/ directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ has no pages");
    names.extend(docs);
    names
        .into_iter()
        .map(|name| {
            let path = root.join(&name);
            let text = std::fs::read_to_string(&path).unwrap();
            Page { name, path, text }
        })
        .collect()
}

impl Page {
    /// Lines with their 1-based numbers, and the fenced block each lies
    /// in: its number and info string (`None` outside blocks; fence lines
    /// are left out).
    fn lines(&self) -> Vec<Line<'_>> {
        let mut out = Vec::new();
        let mut fence: Option<(usize, &str)> = None;
        let mut blocks = 0;
        for (i, line) in self.text.lines().enumerate() {
            if let Some(info) = line.trim_start().strip_prefix("```") {
                fence = match fence {
                    Some(_) => None,
                    None => {
                        blocks += 1;
                        Some((blocks, info.trim()))
                    }
                };
                continue;
            }
            out.push(Line {
                n: i + 1,
                fence,
                text: line,
            });
        }
        out
    }

    /// The text outside fenced blocks, one paragraph (lines up to a blank
    /// line or a fence) at a time, with the number of its first line.
    fn paragraphs(&self) -> Vec<(usize, String)> {
        let mut out: Vec<(usize, String)> = Vec::new();
        let mut open = false;
        for Line {
            n,
            fence,
            text: line,
        } in self.lines()
        {
            if fence.is_some() || line.trim().is_empty() {
                open = false;
                continue;
            }
            if !open {
                out.push((n, String::new()));
                open = true;
            }
            if let Some((_, text)) = out.last_mut() {
                text.push_str(line);
                text.push('\n');
            }
        }
        out
    }

    /// Link targets outside code: `[text](target)` and `[label]: target`.
    fn links(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (first, paragraph) in self.paragraphs() {
            let prose = without_code_spans(&paragraph);
            for (i, line) in prose.lines().enumerate() {
                let n = first + i;
                if let Some(rest) = line.trim_start().strip_prefix('[')
                    && let Some((_, target)) = rest.split_once("]: ")
                {
                    out.push((n, target.trim().to_owned()));
                }
                let mut rest = line;
                while let Some(at) = rest.find("](") {
                    let after = &rest[at + 2..];
                    let end = after.find(')').unwrap_or(after.len());
                    let target = after[..end].split_whitespace().next().unwrap_or("");
                    out.push((n, target.to_owned()));
                    rest = &after[end..];
                }
            }
        }
        out
    }

    /// Code a reader may type: inline code spans (which may run over a
    /// line end), and the lines of fenced blocks other than TOML, Rust and
    /// JSON.
    fn code(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for Line {
            n,
            fence,
            text: line,
        } in self.lines()
        {
            match fence {
                Some((_, "toml" | "rust" | "json")) | None => {}
                Some(_) => out.push((n, line.to_owned())),
            }
        }
        for (first, paragraph) in self.paragraphs() {
            let mut n = first;
            for (i, part) in paragraph.split('`').enumerate() {
                if i % 2 == 1 {
                    out.push((n, part.replace('\n', " ")));
                }
                n += part.matches('\n').count();
            }
        }
        out
    }

    /// The fenced blocks with this info string: the line of each opening
    /// fence, and the block's text.
    fn blocks(&self, info: &str) -> Vec<(usize, String)> {
        let mut out: BTreeMap<usize, (usize, String)> = BTreeMap::new();
        for Line {
            n,
            fence,
            text: line,
        } in self.lines()
        {
            if let Some((block, i)) = fence
                && i == info
            {
                let (_, text) = out.entry(block).or_insert((n - 1, String::new()));
                text.push_str(line);
                text.push('\n');
            }
        }
        out.into_values().collect()
    }

    /// The anchors GitHub makes for this page's headings.
    fn anchors(&self) -> BTreeSet<String> {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = BTreeSet::new();
        for Line {
            fence, text: line, ..
        } in self.lines()
        {
            let Some(heading) = line
                .strip_prefix('#')
                .map(|h| h.trim_start_matches('#'))
                .and_then(|h| h.strip_prefix(' '))
            else {
                continue;
            };
            if fence.is_some() {
                continue;
            }
            let slug: String = heading
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            let n = seen.entry(slug.clone()).or_default();
            out.insert(if *n == 0 { slug } else { format!("{slug}-{n}") });
            *n += 1;
        }
        out
    }
}

/// Text with its inline code spans left out (their line ends kept, so
/// lines keep their numbers).
fn without_code_spans(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 0 {
                part.to_owned()
            } else {
                "\n".repeat(part.matches('\n').count())
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A relative link must lead to a file of the checkout, and its anchor to
/// a heading of that page. Web links are not followed.
fn check_link(page: &Page, target: &str, pages: &[Page]) -> Result<(), String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return Ok(());
    }
    if target.is_empty() {
        return Err("empty".into());
    }
    if target.starts_with('/') {
        return Err("not relative: write it relative to this page".into());
    }
    let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
    let linked = if file.is_empty() {
        page.path.clone()
    } else {
        page.path.parent().unwrap().join(file)
    };
    if !linked.exists() {
        return Err("no such file in the checkout".into());
    }
    if anchor.is_empty() {
        return Ok(());
    }
    let linked = linked.canonicalize().unwrap();
    let Some(to) = pages
        .iter()
        .find(|p| p.path.canonicalize().is_ok_and(|p| p == linked))
    else {
        return Err("an anchor into a file that is not a documentation page".into());
    };
    if to.anchors().contains(anchor) {
        Ok(())
    } else {
        Err(format!("{} has no heading #{anchor}", to.name))
    }
}

/// The options every command takes, which may stand between `ektool` and
/// the command; `true` when the option takes a value.
const GLOBAL_OPTIONS: &[(&str, bool)] = &[
    ("--profile", true),
    ("-r", true),
    ("--region", true),
    ("--endpoint-url", true),
    ("--config", true),
    ("--output", true),
    ("--log-format", true),
    ("--dry-run", false),
    ("--no-rate-limit", false),
    ("-v", false),
    ("-vv", false),
    ("-vvv", false),
    ("--verbose", false),
    ("-q", false),
    ("--quiet", false),
];

/// The words after each `ektool ` in a piece of code, global options left
/// out: `ektool --dry-run snap trim --yes` gives `["snap", "trim", "--yes"]`.
/// `ektool` must stand as a word of its own (not `ektool:owner`,
/// `ektool.toml`, `ektool-tests` or `-p ektool`).
fn mentions(code: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("ektool ").map(|i| from + i) {
        from = at + "ektool ".len();
        let before = code[..at].chars().next_back();
        let standalone =
            before.is_none_or(|c| c.is_whitespace() || matches!(c, '$' | '`' | '(' | '/' | '"'));
        let after_a_flag = code[..at]
            .split_whitespace()
            .next_back()
            .is_some_and(|w| w.starts_with('-'));
        if !standalone || after_a_flag {
            continue;
        }
        let mut words = code[from..].split_whitespace().peekable();
        while let Some(w) = words.peek() {
            let name = w.split('=').next().unwrap_or(w);
            match GLOBAL_OPTIONS.iter().find(|(o, _)| *o == name) {
                Some((_, takes_value)) => {
                    let inline = w.contains('=');
                    words.next();
                    if *takes_value && !inline {
                        words.next();
                    }
                }
                None => break,
            }
        }
        out.push(words.take(2).collect());
    }
    out
}

/// A command word (or `a|b` alternatives), without the punctuation prose
/// puts after it.
fn command_word(w: &str) -> Option<Vec<&str>> {
    let w = w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let ok = |a: &str| {
        a.starts_with(|c: char| c.is_ascii_lowercase())
            && a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let alternatives: Vec<&str> = w.split('|').collect();
    alternatives.iter().all(|a| ok(a)).then_some(alternatives)
}

/// The commands a mention names (`snap trim`, or `instance reboot` and
/// `instance protect` for `instance reboot|protect`), or why it names
/// none. Words that do not look like a command (`ektool [OPTIONS]`, or
/// prose like "ektool is") are no mention.
fn resolve(words: &[&str], commands: &BTreeSet<String>) -> Result<Vec<String>, String> {
    let Some(first) = words.first().and_then(|w| command_word(w)) else {
        return Ok(Vec::new());
    };
    let mut paths = Vec::new();
    for verb in first {
        if !commands.contains(verb) {
            return Err(format!("`ektool {verb}`: no such command"));
        }
        let prefix = format!("{verb} ");
        let is_group = commands.iter().any(|c| c.starts_with(&prefix));
        match words.get(1).and_then(|w| command_word(w)) {
            Some(subs) if is_group => {
                for sub in subs {
                    let path = format!("{verb} {sub}");
                    if !commands.contains(&path) {
                        return Err(format!("`ektool {path}`: no such command"));
                    }
                    paths.push(path);
                }
            }
            _ => paths.push(verb.to_owned()),
        }
    }
    Ok(paths)
}

/// Every command path of the binary (`snap`, `snap trim`, ...), read from
/// the `Commands:` lists of `--help`.
fn commands() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut todo = vec![String::new()];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.split_whitespace().collect();
        args.push("--help");
        let help = Ektool::new().args(&args).run().success().stdout;
        let listed = help
            .lines()
            .skip_while(|l| *l != "Commands:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.strip_prefix("  "))
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
            .filter_map(|l| l.split_whitespace().next());
        for name in listed {
            let sub = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path} {name}")
            };
            if name != "help" {
                todo.push(sub.clone());
            }
            found.insert(sub);
        }
    }
    found
}
