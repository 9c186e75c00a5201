//! Snapshot inventory files: the JSON array `ektool snap list --output
//! json` writes and `ektool snap plan --inventory` reads.
//!
//! A million-snapshot inventory is about 240 MB of JSON. Parsing it on one
//! core takes longer than planning it, so [`parse`] splits the array at
//! element boundaries and parses the pieces on every core, and
//! [`write_json_array`] serialises a long slice the same way. Both give
//! exactly what `serde_json` gives on one core, errors included.
//! [`read_file`] does not hold the whole text: it reads and parses a file a
//! few megabytes at a time, so a million snapshots fit in a few hundred
//! megabytes.

use std::io::{Read, Write};
use std::path::Path;

use ec2kit::Snapshot;
use serde::Serialize;

/// An inventory that is not a JSON array of snapshots. Its message quotes
/// at most a line of the input (serde_json quotes whole string values).
#[derive(Debug, thiserror::Error)]
#[error("{line}:{column}: not a snapshot inventory: {}", shorten(&source.to_string()))]
#[non_exhaustive]
pub struct InventoryError {
    /// 1-based line of the error in the input.
    pub line: usize,
    /// 1-based column of the error in the input.
    pub column: usize,
    /// What serde_json found.
    #[source]
    pub source: serde_json::Error,
}

/// `s` cut to a line's length, keeping its end (serde_json ends with the
/// position).
fn shorten(s: &str) -> String {
    const HEAD: usize = 120;
    const TAIL: usize = 40;
    let n = s.chars().count();
    if n <= HEAD + TAIL + 1 {
        return s.to_owned();
    }
    let head: String = s.chars().take(HEAD).collect();
    let tail: String = s.chars().skip(n - TAIL).collect();
    format!("{head}…{tail}")
}

/// An inventory file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be read (missing, a directory, not UTF-8).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The text is not a snapshot inventory.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

/// How much text [`read_file`] parses at a time.
const READ_BLOCK: usize = 8 << 20;

/// Reads an inventory file: what [`parse`] gives for its text, errors
/// included, holding a few blocks of the text at a time instead of all of
/// it.
///
/// The text is parsed a block of elements at a time (cut at a guessed
/// element boundary, parsed as [`parse`] does). If a block fails, the
/// input may be bad or the guess wrong (a `}` `,` `{` inside a string):
/// then the file is read again whole and parsed as one, so an error's
/// position and message are those of `serde_json` on the whole text.
pub fn read_file(path: &Path) -> Result<Vec<Snapshot>, ReadError> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata().map_or(0, |m| m.len());
    read_blocks(file, READ_BLOCK, size, || std::fs::read_to_string(path))
}

/// [`read_file`] over any reader; `whole` reads the input again in one
/// piece when a block fails.
fn read_blocks<R: Read + Send>(
    reader: R,
    block: usize,
    size: u64,
    whole: impl FnOnce() -> std::io::Result<String>,
) -> Result<Vec<Snapshot>, ReadError> {
    match parse_blocks(reader, block, size)? {
        Some(snapshots) => Ok(snapshots),
        None => Ok(parse(&whole()?)?),
    }
}

/// The block-at-a-time parse of [`read_file`], `block` bytes at a time,
/// of an input of about `size` bytes; `None` when a block fails (bad
/// input, or a boundary guessed inside a string).
///
/// Every core runs a worker that takes the next block from the reader (in
/// turn, under a lock) and parses it while the others read and parse
/// theirs; this thread puts the pieces in order.
fn parse_blocks<R: Read + Send>(
    reader: R,
    block: usize,
    size: u64,
) -> std::io::Result<Option<Vec<Snapshot>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let source = std::sync::Mutex::new(Blocks {
        reader,
        carry: Vec::new(),
        next: 0,
        started: false,
        done: false,
        failed: false,
    });
    let (sender, receiver) = std::sync::mpsc::channel::<(usize, Vec<Snapshot>)>();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let sender = sender.clone();
                let source = &source;
                s.spawn(move || -> std::io::Result<()> {
                    loop {
                        let Some((index, text)) = Blocks::take(source, block)? else {
                            return Ok(());
                        };
                        // One check of the whole block is cheaper than
                        // serde_json's check of each string of a slice.
                        let parsed = std::str::from_utf8(&text)
                            .ok()
                            .and_then(|text| serde_json::from_str::<Vec<Snapshot>>(text).ok());
                        match parsed {
                            Some(snapshots) => {
                                // The receiver only stops listening when
                                // the scope ends.
                                let _ = sender.send((index, snapshots));
                            }
                            None => {
                                Blocks::fail(source);
                                return Ok(());
                            }
                        }
                    }
                })
            })
            .collect();
        drop(sender);
        let mut snapshots: Vec<Snapshot> = Vec::new();
        let mut waiting = std::collections::BTreeMap::new();
        let mut next = 0;
        for (index, piece) in receiver {
            waiting.insert(index, piece);
            while let Some(piece) = waiting.remove(&next) {
                if snapshots.is_empty() && !piece.is_empty() {
                    // Room for the whole input at the first block's
                    // density: no copying as the vector grows.
                    let per = (block as u64 / piece.len() as u64).max(1);
                    let estimate = size / per + size / per / 32;
                    snapshots.reserve(usize::try_from(estimate).unwrap_or(0));
                }
                snapshots.extend(piece);
                next += 1;
            }
        }
        for worker in workers {
            worker.join().map_err(|_| panicked())??;
        }
        let failed = source.lock().map_err(|_| panicked())?.failed;
        Ok((!failed).then_some(snapshots))
    })
}

fn panicked() -> std::io::Error {
    std::io::Error::other("inventory parser panicked")
}

/// What is left of the input of [`parse_blocks`], handed out a block at a
/// time.
struct Blocks<R> {
    reader: R,
    /// The start of the next block (the text after the last cut).
    carry: Vec<u8>,
    /// The index of the next block.
    next: usize,
    /// Whether the `[` was read.
    started: bool,
    /// Whether the input ended.
    done: bool,
    /// Whether a block failed to parse.
    failed: bool,
}

impl<R: Read> Blocks<R> {
    /// The next block (about `block` bytes) as a JSON array, with its
    /// index; `None` at the end or after a failure.
    fn take(
        source: &std::sync::Mutex<Self>,
        block: usize,
    ) -> std::io::Result<Option<(usize, Vec<u8>)>> {
        let mut guard = source.lock().map_err(|_| panicked())?;
        let this = &mut *guard;
        if this.done || this.failed {
            return Ok(None);
        }
        let mut text = Vec::with_capacity(block + (block >> 2) + this.carry.len());
        if this.started {
            text.push(b'[');
        }
        text.append(&mut this.carry);
        let mut want = block;
        loop {
            let mut eof = false;
            while text.len() < want {
                let room = (want - text.len()) as u64;
                if (&mut this.reader).take(room).read_to_end(&mut text)? == 0 {
                    eof = true;
                    break;
                }
            }
            // The array's `[`: the first non-whitespace byte.
            let open = text.iter().position(|b| !is_json_ws(*b));
            let Some(from) = open.filter(|&i| text[i] == b'[').map(|i| i + 1) else {
                // Not an array (or only whitespace so far): the parse of
                // the whole input says what it is.
                this.failed = true;
                return Ok(None);
            };
            this.started = true;
            let index = this.next;
            if eof {
                // The rest: `[`, elements, `]`, whitespace.
                this.done = true;
                this.next += 1;
                return Ok(Some((index, text)));
            }
            let Some(cut) = last_boundary(&text, from) else {
                // No element ends in the block yet: read more.
                want += block;
                continue;
            };
            this.carry = text.split_off(cut);
            this.next += 1;
            // End the array where the next element's comma was. A cut
            // inside a string or a nested value leaves the block's last
            // element open, so the block fails instead of parsing wrongly.
            while text.last().is_some_and(|b| is_json_ws(*b)) {
                text.pop();
            }
            text.pop();
            text.push(b']');
            return Ok(Some((index, text)));
        }
    }

    /// Stops the other workers: the input is parsed whole instead.
    fn fail(source: &std::sync::Mutex<Self>) {
        if let Ok(mut this) = source.lock() {
            this.failed = true;
        }
    }
}

/// The index of the last `{` after `from` that starts an element: a `{`
/// preceded (whitespace aside) by `,` and before that by `}`.
fn last_boundary(bytes: &[u8], from: usize) -> Option<usize> {
    let mut end = bytes.len();
    while end > from {
        let open = from + bytes[from..end].iter().rposition(|&b| b == b'{')?;
        let before = bytes[from..open].iter().rposition(|b| !is_json_ws(*b));
        if let Some(comma) = before.map(|c| from + c).filter(|&c| bytes[c] == b',') {
            let close = bytes[from..comma].iter().rposition(|b| !is_json_ws(*b));
            if close.is_some_and(|c| bytes[from + c] == b'}') {
                return Some(open);
            }
        }
        end = open;
    }
    None
}

/// JSON's whitespace (RFC 8259): not `\x0c` or Unicode spaces, which
/// `char::is_whitespace` would also take.
fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Below this size one thread is faster than starting others.
const PARALLEL_MIN_BYTES: usize = 4 << 20;

/// Parses an inventory: a JSON array of [`Snapshot`]s, in input order.
///
/// Large inputs are parsed on all available cores. The split points are
/// guesses (a `}` `,` `{` sequence); a guess inside a string or a nested
/// value makes the piece before it fail to parse (it ends inside that
/// string or value), and then the whole input is parsed again on one core,
/// so the result and any error position are those of a plain
/// `serde_json::from_str`.
pub fn parse(text: &str) -> Result<Vec<Snapshot>, InventoryError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads > 1
        && text.len() >= PARALLEL_MIN_BYTES
        && let Some(snapshots) = parse_parallel(text, threads)
    {
        return Ok(snapshots);
    }
    serde_json::from_str(text).map_err(|source| InventoryError {
        line: source.line(),
        column: source.column(),
        source,
    })
}

/// The parallel attempt; `None` when a piece fails or no split was found.
fn parse_parallel(text: &str, threads: usize) -> Option<Vec<Snapshot>> {
    let body_start = text.find('[')? + 1;
    let body_end = text.rfind(']')?;
    // Anything but whitespace around the array is for serde_json to report.
    let blank = |s: &str| s.bytes().all(is_json_ws);
    if body_end <= body_start || !blank(&text[..body_start - 1]) || !blank(&text[body_end + 1..]) {
        return None;
    }
    let mut cuts = vec![body_start];
    for k in 1..threads {
        let guess = body_start + (body_end - body_start) * k / threads;
        let from = guess.max(*cuts.last()?);
        if let Some(cut) = next_boundary(text.as_bytes(), from, body_end)
            && cut > *cuts.last()?
        {
            cuts.push(cut);
        }
    }
    if cuts.len() < 2 {
        return None;
    }
    cuts.push(body_end);
    let last = cuts.len() - 2;
    let pieces: Vec<Option<Vec<Snapshot>>> = std::thread::scope(|s| {
        let handles: Vec<_> = cuts
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let piece = text.get(w[0]..w[1]);
                s.spawn(move || parse_piece(piece?, i == last))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let total = pieces.iter().map(|p| p.as_ref().map_or(0, Vec::len)).sum();
    let mut all = Vec::with_capacity(total);
    for piece in pieces {
        all.extend(piece?);
    }
    Some(all)
}

/// Parses `{…},{…},…{…}` (elements of the array) as an array. Every piece
/// but the last ends in the comma that preceded the next piece; the last
/// must not end in one (serde_json refuses a trailing comma).
fn parse_piece(piece: &str, last: bool) -> Option<Vec<Snapshot>> {
    serde_json::from_str(&as_array(piece, last)?).ok()
}

/// `[` + the elements + `]`: every piece but the last ends in the comma
/// that preceded the next piece, which goes; the last must not end in one.
fn as_array(piece: &str, last: bool) -> Option<String> {
    let piece = piece.trim_end_matches(|c: char| c.is_ascii() && is_json_ws(c as u8));
    let piece = match piece.strip_suffix(',') {
        Some(p) if !last => p,
        None if last => piece,
        _ => return None,
    };
    let mut array = String::with_capacity(piece.len() + 2);
    array.push('[');
    array.push_str(piece);
    array.push(']');
    Some(array)
}

/// The index of the `{` that starts the next element at or after `from`:
/// a `{` preceded (whitespace aside) by `,` and before that by `}`.
fn next_boundary(bytes: &[u8], from: usize, end: usize) -> Option<usize> {
    let mut i = from;
    while i < end {
        let open = i + bytes[i..end].iter().position(|&b| b == b'{')?;
        let before = bytes[..open].iter().rposition(|b| !is_json_ws(*b));
        if let Some(comma) = before.filter(|&c| bytes[c] == b',') {
            let close = bytes[..comma].iter().rposition(|b| !is_json_ws(*b));
            if close.is_some_and(|c| bytes[c] == b'}') {
                return Some(open);
            }
        }
        i = open + 1;
    }
    None
}

/// Writes `items` as one compact JSON array, serialising pieces of a long
/// slice on all available cores; the bytes are those `serde_json::to_writer`
/// writes.
pub fn write_json_array<T, W>(items: &[T], out: W) -> std::io::Result<()>
where
    T: Serialize + Sync,
    W: Write,
{
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    write_array(items, out, threads, 64 * 1024)
}

fn write_array<T, W>(items: &[T], mut out: W, threads: usize, piece: usize) -> std::io::Result<()>
where
    T: Serialize + Sync,
    W: Write,
{
    out.write_all(b"[")?;
    if threads < 2 || items.len() < 2 * piece {
        write_elements(items, &mut out, true)?;
    } else {
        // Rounds of `threads` pieces: each thread fills its own buffer, the
        // buffers are written in order, memory stays at a few pieces.
        let pieces: Vec<&[T]> = items.chunks(piece.max(1)).collect();
        for (round, group) in pieces.chunks(threads).enumerate() {
            let buffers: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|s| {
                let handles: Vec<_> = group
                    .iter()
                    .enumerate()
                    .map(|(i, piece)| {
                        let first = round == 0 && i == 0;
                        s.spawn(move || {
                            let mut buf = Vec::with_capacity(piece.len() * 128);
                            write_elements(piece, &mut buf, first).map(|()| buf)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(std::io::Error::other("serialiser panicked")))
                    })
                    .collect()
            });
            for buf in buffers {
                out.write_all(&buf?)?;
            }
        }
    }
    out.write_all(b"]")?;
    out.flush()
}

fn write_elements<T: Serialize, W: Write>(
    items: &[T],
    out: &mut W,
    first: bool,
) -> std::io::Result<()> {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !first {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, item).map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2kit::{SnapshotId, Tags, VolumeId};
    use proptest::prelude::*;

    fn snapshot(i: usize, description: &str) -> Snapshot {
        let mut s = Snapshot::new(
            SnapshotId::parse(&format!("snap-{i:08x}")).unwrap(),
            VolumeId::parse("vol-0000000a").ok(),
            jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap(),
            ec2kit::SnapshotState::Completed,
        );
        s.tags = Tags::new().with("Name", format!("web-{}", i % 7));
        s.description = Some(description.into());
        s
    }

    #[test]
    fn boundaries_inside_strings_fall_back_to_one_core() {
        // Every description holds a fake boundary; whatever the split, the
        // result equals serde_json's.
        let items: Vec<Snapshot> = (0..200)
            .map(|i| snapshot(i, r#"x},{"id":"snap-ffffffff"}"#))
            .collect();
        let text = serde_json::to_string(&items).unwrap();
        for threads in 2..6 {
            let got = parse_parallel(&text, threads).unwrap_or_else(|| parse(&text).unwrap());
            assert_eq!(got, items);
        }
    }

    #[test]
    fn a_valid_inventory_is_read_once_in_blocks() {
        let items: Vec<Snapshot> = (0..500).map(|i| snapshot(i, "plain")).collect();
        let text = serde_json::to_string_pretty(&items).unwrap();
        for block in [1, 7, 300, 4096, text.len() + 1] {
            let got = read_blocks(text.as_bytes(), block, text.len() as u64, || {
                panic!("read twice (block {block})")
            });
            assert_eq!(got.unwrap(), items, "block {block}");
        }
    }

    #[test]
    fn a_file_that_cannot_be_read_is_an_io_error() {
        let dir = std::env::temp_dir().join(format!("ektool-inventory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(read_file(&dir), Err(ReadError::Io(_))));
        assert!(matches!(
            read_file(&dir.join("missing")),
            Err(ReadError::Io(_))
        ));
        let latin1 = dir.join("latin1.json");
        std::fs::write(&latin1, b"[{\"id\": \"snap-\xe9\"}]").unwrap();
        let err = read_file(&latin1).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_around_the_array_is_an_error() {
        let items: Vec<Snapshot> = (0..50).map(|i| snapshot(i, "plain")).collect();
        let text = format!("{} trailing", serde_json::to_string(&items).unwrap());
        assert_eq!(parse_parallel(&text, 2), None);
        assert!(parse(&text).is_err());
    }

    #[test]
    fn errors_are_serde_json_positions() {
        let text = "[\n  {\"id\": \"snap-1\"}\n]";
        let err = parse(text).unwrap_err();
        let plain = serde_json::from_str::<Vec<Snapshot>>(text).unwrap_err();
        assert_eq!((err.line, err.column), (plain.line(), plain.column()));
        assert_eq!(err.line, 2, "{err}");
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn parallel_parse_of_a_pretty_array() {
        let items: Vec<Snapshot> = (0..300).map(|i| snapshot(i, "plain")).collect();
        let text = serde_json::to_string_pretty(&items).unwrap();
        assert_eq!(parse_parallel(&text, 3), Some(items));
    }

    #[test]
    fn a_trailing_comma_or_non_json_whitespace_is_serde_jsons_error() {
        let items: Vec<Snapshot> = (0..60).map(|i| snapshot(i, "plain")).collect();
        let text = serde_json::to_string(&items).unwrap();
        let trailing = format!("{},]", &text[..text.len() - 1]);
        let form_feed = text.replace("},{", "},\u{c}{");
        let leading = format!("\u{c}{text}");
        for bad in [trailing, form_feed, leading] {
            assert!(serde_json::from_str::<Vec<Snapshot>>(&bad).is_err());
            for threads in 2..6 {
                assert_eq!(parse_parallel(&bad, threads), None, "{threads}");
            }
            let plain = serde_json::from_str::<Vec<Snapshot>>(&bad).unwrap_err();
            let err = parse(&bad).unwrap_err();
            assert_eq!((err.line, err.column), (plain.line(), plain.column()));
        }
    }

    #[test]
    fn error_messages_quote_at_most_a_line() {
        // serde_json quotes the whole string value it did not expect.
        let huge = format!(r#"["{}"]"#, "x".repeat(5_000_000));
        let err = parse(&huge).unwrap_err().to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.starts_with("1:"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    proptest! {
        /// Whatever the input (valid arrays, mutated ones, arbitrary
        /// bytes), the parallel reader gives exactly serde_json's answer.
        #[test]
        fn any_input_gives_serde_jsons_result_and_error(
            n in 0usize..60,
            threads in 2usize..6,
            block in 1usize..400,
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), proptest::sample::select(vec![",", " ", "\u{c}", "}", "{", "]", "\"", "\u{a0}", "x", ""])), 0..3),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let items: Vec<Snapshot> = (0..n).map(|i| snapshot(i, "d")).collect();
            let mut text = serde_json::to_string(&items).unwrap();
            for (at, what) in &edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) { i -= 1; }
                if what.is_empty() {
                    if i < text.len() {
                        let c = text[i..].chars().next().unwrap();
                        text.replace_range(i..i + c.len_utf8(), "");
                    }
                } else {
                    text.insert_str(i, what);
                }
            }
            for input in [text.clone(), String::from_utf8_lossy(&junk).into_owned()] {
                let plain = serde_json::from_str::<Vec<Snapshot>>(&input);
                if let Some(parallel) = parse_parallel(&input, threads) {
                    prop_assert_eq!(Some(&parallel), plain.as_ref().ok(), "{}", input);
                }
                match (parse(&input), &plain) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(&a, b),
                    (Err(a), Err(b)) => {
                        prop_assert_eq!((a.line, a.column), (b.line(), b.column()));
                        prop_assert!(a.to_string().len() < 400);
                    }
                    (a, b) => prop_assert!(false, "{:?} vs {:?}", a.map(|v| v.len()), b.as_ref().map(|v| v.len())),
                }
                // The block reader gives the same, whatever the block size.
                let blocks = read_blocks(input.as_bytes(), block, input.len() as u64, || Ok(input.clone()));
                match (blocks, &plain) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(&a, b),
                    (Err(ReadError::Inventory(a)), Err(b)) => {
                        prop_assert_eq!((a.line, a.column), (b.line(), b.column()));
                        prop_assert_eq!(a.source.to_string(), b.to_string());
                    }
                    (a, b) => prop_assert!(false, "{:?} vs {:?}", a.map(|v| v.len()), b.as_ref().map(|v| v.len())),
                }
            }
        }

        #[test]
        fn parallel_write_and_parse_equal_serde_json(
            n in 0usize..400,
            threads in 2usize..6,
            piece in 1usize..50,
            desc in "[a-z{},\\[\\]\" ]{0,12}",
        ) {
            let items: Vec<Snapshot> = (0..n).map(|i| snapshot(i, &desc)).collect();
            let text = serde_json::to_string(&items).unwrap();
            let mut written = Vec::new();
            write_array(&items, &mut written, threads, piece).unwrap();
            prop_assert_eq!(&written, text.as_bytes());
            let parsed = parse_parallel(&text, threads).unwrap_or_else(|| parse(&text).unwrap());
            prop_assert_eq!(&parsed, &items);
            let blocks = read_blocks(text.as_bytes(), piece * 40, text.len() as u64, || Ok(text.clone())).unwrap();
            prop_assert_eq!(blocks, items);
        }
    }
}
