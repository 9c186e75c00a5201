//! Human tables and JSON.

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use crate::error::CliError;

/// Prints rows under headers, aligned, without borders (kubectl style).
pub fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for row in rows {
        t.add_row(row);
    }
    // comfy-table pads the first column on the left too; trim for a flush margin.
    for line in t.to_string().lines() {
        println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
    }
}

/// Writes a value as JSON to stdout: indented on a terminal, compact and
/// streamed otherwise (a million-line plan for a script should not be
/// built in memory twice).
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    use std::io::{IsTerminal, Write};
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
        .map_err(|source| CliError::Io {
            path: "<stdout>".into(),
            source,
        })
}

/// Writes a long slice as a JSON array: like [`json`], but piped output is
/// serialised on all cores (a million plan lines).
pub fn json_array<T: Serialize + Sync>(items: &[T]) -> Result<(), CliError> {
    use std::io::{IsTerminal, Write};
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return json(items);
    }
    let mut out = std::io::BufWriter::new(stdout.lock());
    snapkit::inventory::write_json_array(items, &mut out)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Io {
            path: "<stdout>".into(),
            source,
        })
}

/// `-` for a missing value.
pub fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}
