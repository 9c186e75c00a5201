//! One round trip per command: a shell kept open on each connection.
//!
//! An SSH `exec` costs two round trips before a command's output can come
//! back: the channel open, then the exec request (the protocol cannot send
//! the request before the open is confirmed: it names the server's channel
//! number). Deploys run a handful of short commands per host, so on a
//! 50 ms link the channel opens were half of a rollback.
//!
//! So each connection starts, on first use, one small POSIX `sh` loop (the
//! *driver*) on a channel of its own and keeps it. A command is one write
//! (a header line, the command line, its standard input) and one read (its
//! output, then an end marker with its exit status): one round trip.
//!
//! - The driver reads exactly the announced bytes (`head -c`, which never
//!   reads past its count on Linux: GNU and BusyBox both read at most the
//!   bytes left), writes the command and its input to files in a private
//!   directory (`mktemp -d` makes it 0700; removed when the driver ends;
//!   the umask is left alone, commands create files as over `exec`), and
//!   runs `sh FILE < INPUT`: the command never reads the driver's stream,
//!   and its words never show in the host's process list. The input file
//!   is emptied as soon as the command ends.
//! - The end marker carries a random nonce per command, so no output can
//!   fake it. Commands run one at a time (the connection's lock).
//! - Whatever breaks the stream (the driver killed, a garbled frame, an
//!   end without a marker) fails that command and retires the driver; the
//!   next command starts a new one. A host where the driver cannot start
//!   (no `head -c`, no writable temporary directory) keeps using `exec`.
//!
//! Commands with large or streamed input, and streamed output, still use
//! one `exec` channel each ([`MAX_INPUT`]).

use std::fmt::Write as _;

use crate::remote::{Command, Program, quote};

/// Standard input larger than this goes through an `exec` channel (the
/// driver would write it to a file first).
pub(super) const MAX_INPUT: usize = 256 * 1024;

/// What the driver prints once it is ready.
pub(super) const BANNER: &[u8] = b"ektool-shell 1\n";

/// The driver, run by `sh -c`. Each request is a line `NONCE LEN
/// INPUT_LEN TIMEOUT`, then LEN bytes of script ([`script`]), then
/// INPUT_LEN bytes of input. A script with a timeout runs under
/// `timeout` in a new `sh`; one without, in a subshell of the driver (a
/// fork, no exec: each process a command starts is about a millisecond of
/// the host's CPU).
pub(super) const DRIVER: &str = r#"d=$(mktemp -d "${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/.ektool-sh.XXXXXX" 2>/dev/null || mktemp -d "${TMPDIR:-/tmp}/.ektool-sh.XXXXXX") || exit 1
trap 'rm -rf "$d"' EXIT
trap 'exit 129' HUP
trap 'exit 143' TERM
: > "$d/i" || exit 1
echo ektool-shell 1
echo ektool-shell 1 >&2
while IFS=' ' read -r n s i t; do
  case "$n$s$i$t" in *[!a-z0-9-]*|'') exit 1;; esac
  head -c "$s" > "$d/c" || exit 1
  if [ "$i" -gt 0 ]; then head -c "$i" > "$d/i" || exit 1; fi
  if [ "$t" -gt 0 ]; then timeout -k 5 "$t" sh "$d/c" < "$d/i"; else (. "$d/c") < "$d/i"; fi
  r=$?
  : > "$d/i"
  printf '%s %s\n' "$n" "$r"
  printf '%s\n' "$n" >&2
done
"#;

/// The most a login script may print before the banner (else: no
/// command shell on this host).
pub(super) const MAX_GREETING: usize = 64 * 1024;

/// Whether `got` ends with the banner on a line of its own (what a login
/// script printed before it is dropped).
pub(super) fn ends_with_banner(got: &[u8]) -> bool {
    got.strip_suffix(BANNER)
        .is_some_and(|before| before.is_empty() || before.ends_with(b"\n"))
}

/// A fresh nonce: no command's output can contain it by chance.
pub(super) fn nonce() -> String {
    format!("ektool-end-{}", uuid::Uuid::new_v4().simple())
}

/// The bytes of one request: `script` with `input`, killed by the host
/// after `timeout_secs` (0: none).
pub(super) fn frame(nonce: &str, script: &str, input: &[u8], timeout_secs: u64) -> Vec<u8> {
    let mut header = String::new();
    let _ = writeln!(
        header,
        "{nonce} {} {} {timeout_secs}",
        script.len(),
        input.len()
    );
    let mut out = Vec::with_capacity(header.len() + script.len() + input.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(script.as_bytes());
    out.extend_from_slice(input);
    out
}

/// The script the driver runs for `command`: `cd`, `export`s, then the
/// program itself (`exec` for an argv, the script's text for a shell
/// script), with no `env` or `sh -c` in between. An environment name a
/// shell cannot export falls back to the command's one-line form.
pub(super) fn script(command: &Command) -> String {
    let valid = |k: &str| {
        let mut b = k.bytes();
        b.next()
            .is_some_and(|c| c == b'_' || c.is_ascii_alphabetic())
            && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
    };
    if !command.env.iter().all(|(k, _)| valid(k)) {
        return command.to_shell_line();
    }
    let mut out = String::new();
    if let Some(cwd) = &command.cwd {
        let _ = writeln!(out, "cd {} || exit $?", quote(cwd));
    }
    for (k, v) in &command.env {
        let _ = writeln!(out, "export {k}={}", quote(v));
    }
    match &command.program {
        Program::Argv(args) => {
            out.push_str("exec ");
            out.push_str(&args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "));
            out.push('\n');
        }
        Program::Shell(text) => {
            out.push_str(text);
            out.push('\n');
        }
    }
    out
}

/// Where a command's output ends, once its marker has arrived.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Not yet.
    Open,
    /// Output ends at this length; the exit status (stdout only).
    At(usize, Option<i32>),
    /// Something follows the marker, or it is malformed: the stream cannot
    /// be trusted.
    Broken,
}

/// Looks for the end marker at the end of `buf` (the driver writes
/// nothing after it until the next request). `with_status`: the stdout
/// marker, `NONCE STATUS\n`; else stderr's, `NONCE\n`.
pub(super) fn end(buf: &[u8], nonce: &str, with_status: bool) -> End {
    if buf.last() != Some(&b'\n') {
        return End::Open;
    }
    let body = &buf[..buf.len() - 1];
    let n = nonce.as_bytes();
    // The marker is at most the nonce, a space and a status of 3 digits.
    let from = body.len().saturating_sub(n.len() + 8);
    let Some(at) = body[from..]
        .windows(n.len())
        .rposition(|w| w == n)
        .map(|p| from + p)
    else {
        return End::Open;
    };
    let rest = &body[at + n.len()..];
    if !with_status {
        return if rest.is_empty() {
            End::At(at, None)
        } else {
            End::Broken
        };
    }
    let Some(digits) = rest.strip_prefix(b" ") else {
        return End::Broken;
    };
    match std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
    {
        Some(code) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            End::At(at, Some(code))
        }
        _ => End::Broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_marker_after_output_with_or_without_a_newline() {
        let n = "ektool-end-abc";
        assert_eq!(end(b"", n, true), End::Open);
        assert_eq!(end(b"hello\n", n, true), End::Open);
        assert_eq!(
            end(b"hello\nektool-end-abc 0\n", n, true),
            End::At(6, Some(0))
        );
        assert_eq!(
            end(b"helloektool-end-abc 17\n", n, true),
            End::At(5, Some(17))
        );
        assert_eq!(end(b"ektool-end-abc 1", n, true), End::Open);
        assert_eq!(end(b"ektool-end-abc x\n", n, true), End::Broken);
        assert_eq!(end(b"ektool-end-abc\n", n, true), End::Broken);
        assert_eq!(end(b"err\nektool-end-abc\n", n, false), End::At(4, None));
        assert_eq!(end(b"ektool-end-abc 0\n", n, false), End::Broken);
    }

    #[test]
    fn the_banner_ends_whatever_a_login_script_printed() {
        assert!(ends_with_banner(b"ektool-shell 1\n"));
        assert!(ends_with_banner(b"Welcome!\nektool-shell 1\n"));
        assert!(!ends_with_banner(b"Welcome!ektool-shell 1\n"));
        assert!(!ends_with_banner(b"ektool-shell 1"));
        assert!(!ends_with_banner(b""));
    }

    #[test]
    fn a_request_announces_its_lengths() {
        let f = frame("ektool-end-x", "echo hi", b"in\n", 5);
        assert_eq!(f, b"ektool-end-x 7 3 5\necho hiin\n");
    }

    proptest! {
        /// Whatever a command prints, the marker behind it is found where
        /// it starts, with the status it carries.
        #[test]
        fn output_never_hides_or_fakes_the_marker(
            out in proptest::collection::vec(any::<u8>(), 0..300),
            code in 0i32..256,
        ) {
            let n = nonce();
            let mut buf = out.clone();
            // Before the marker: never a match (the nonce is fresh).
            prop_assert!(!matches!(end(&buf, &n, true), End::At(..)));
            buf.extend_from_slice(format!("{n} {code}\n").as_bytes());
            prop_assert_eq!(end(&buf, &n, true), End::At(out.len(), Some(code)));
            let mut err = out.clone();
            err.extend_from_slice(format!("{n}\n").as_bytes());
            prop_assert_eq!(end(&err, &n, false), End::At(out.len(), None));
        }
    }
}
