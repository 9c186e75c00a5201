//! Human tables and JSON, and what happens when nobody reads them.
//!
//! `ektool … | head` closes the pipe early. Rust ignores SIGPIPE, so every
//! later write fails with `BrokenPipe` (and `println!` panics). ektool then
//! ends quietly with [`exit::PIPE`](crate::exit::PIPE) (141, what a shell
//! reports for a program killed by SIGPIPE): writes through this module
//! unwind with [`StdoutClosed`], `println!`'s panic is recognised by
//! [`is_closed_pipe_panic`] (and not printed), and `main` turns both into
//! that exit code.

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use crate::error::CliError;

/// How a command prints its result (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// JSON for scripts.
    Json,
}

/// The unwinding payload of a write to a closed standard output.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

/// Whether a write error means the reader went away.
pub(crate) fn is_closed(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// Whether a panic is `println!`/`eprintln!` (or a library writing with
/// `expect`) failing on a closed pipe, rather than a bug.
pub(crate) fn is_closed_pipe_panic(payload: &(dyn std::any::Any + Send)) -> bool {
    if payload.is::<StdoutClosed>() {
        return true;
    }
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied());
    text.is_some_and(closed_pipe_message)
}

/// `failed printing to stdout: Broken pipe (os error 32)`.
pub(crate) fn closed_pipe_message(text: &str) -> bool {
    let epipe = std::io::Error::from_raw_os_error(32).to_string();
    text.starts_with("failed printing to std") && text.ends_with(&epipe)
}

/// Writes `bytes` to standard output; a closed pipe ends the command
/// quietly (see the module docs).
pub(crate) fn write(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if is_closed(&e) => std::panic::resume_unwind(Box::new(StdoutClosed)),
        Err(source) => Err(CliError::Io {
            path: "<stdout>".into(),
            source,
        }),
    }
}

/// Writes one line to standard output (see [`write`]).
pub(crate) fn line(text: &str) -> Result<(), CliError> {
    write(format!("{text}\n").as_bytes())
}

/// Prints rows under headers, aligned, without borders (kubectl style).
/// A closed pipe ends the command quietly; another write error is
/// reported and ends it with exit 1.
pub(crate) fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    if let Err(e) = write(render_table(headers, rows).as_bytes()) {
        // Not a closed pipe (that unwinds): a full disk, an I/O error.
        crate::error::report(&e);
        std::process::exit(crate::exit::FAILURE.into());
    }
}

/// The text of [`table`].
fn render_table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for row in rows {
        t.add_row(row);
    }
    // comfy-table pads the first column on the left too; trim for a flush margin.
    let mut text = String::new();
    for line in t.to_string().lines() {
        text.push_str(line.strip_prefix(' ').unwrap_or(line).trim_end());
        text.push('\n');
    }
    text
}

/// Like [`table`] (the same text), for tables too long to hold: `rows`
/// is called twice, once to measure the columns and once to print, and
/// only one row is held at a time.
pub(crate) fn long_table<I>(headers: &[&str], rows: impl Fn() -> I) -> Result<(), CliError>
where
    I: Iterator<Item = Vec<String>>,
{
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_long_table(&mut out, headers, rows)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// [`long_table`] into `out`. A cell of several lines falls back to
/// [`render_table`].
fn write_long_table<I>(
    out: &mut impl Write,
    headers: &[&str],
    rows: impl Fn() -> I,
) -> std::io::Result<()>
where
    I: Iterator<Item = Vec<String>>,
{
    use unicode_width::UnicodeWidthStr;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    for row in rows() {
        for (i, cell) in row.iter().enumerate() {
            if cell.contains('\n') {
                return out.write_all(render_table(headers, rows()).as_bytes());
            }
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.width()),
                None => widths.push(cell.width()),
            }
        }
    }
    let mut line = String::new();
    let header = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(header).chain(rows()) {
        line.clear();
        for (i, width) in widths.iter().enumerate() {
            // comfy-table's cells: a space, the text padded, a space.
            let cell = row.get(i).map_or("", String::as_str);
            line.push(' ');
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.width() + 1));
        }
        let text = line.strip_prefix(' ').unwrap_or(&line).trim_end();
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes a value as JSON to stdout: indented on a terminal, compact and
/// streamed otherwise (a million-line plan for a script should not be
/// built in memory twice).
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    let pretty = stdout.is_terminal();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = if pretty {
        serde_json::to_writer_pretty(&mut out, value)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    written
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Writes a long slice as a JSON array: like [`json`], but piped output is
/// serialised on all cores (a million plan lines).
pub(crate) fn json_array<T: Serialize + Sync>(items: &[T]) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return json(items);
    }
    let mut out = std::io::BufWriter::new(stdout.lock());
    snapkit::inventory::write_json_array(items, &mut out)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// A write error on standard output: a closed pipe ends the command
/// quietly (see the module docs).
fn stdout_error(source: std::io::Error) -> CliError {
    if is_closed(&source) {
        std::panic::resume_unwind(Box::new(StdoutClosed));
    }
    CliError::Io {
        path: "<stdout>".into(),
        source,
    }
}

/// `-` for a missing value.
pub(crate) fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The long table is the table, character for character, whatever
        /// the cells hold (wide and combining characters, spaces, lines).
        #[test]
        fn a_long_table_is_the_table(
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-z \u{4e00}-\u{4e20}\u{301}\u{1f600}é\t\n-]{0,12}", 3),
                0..20,
            ),
        ) {
            let headers = ["ONE", "TWO", "THREE"];
            let mut long = Vec::new();
            write_long_table(&mut long, &headers, || rows.clone().into_iter()).unwrap();
            prop_assert_eq!(String::from_utf8(long).unwrap(), render_table(&headers, rows.clone()));
        }
    }
}
