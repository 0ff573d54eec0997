//! `export` and `import`, as JSON lines.
//!
//! ```text
//! {"leasehold_export":1,"schema":2,"taken_at":"2026-11-25T14:00:00.000Z"}
//! {"lease":{"namespace":"ops","name":"migrate","holder":"host-1","epoch":3,"expires_in_ms":2500}}
//! {"lease":{"namespace":"ops","name":"backup","holder":null,"epoch":7,"expires_in_ms":null}}
//! {"pin":{"namespace":"ops","name":"migrate","entity":"machine-0","reason":"upgrade","expires_in_ms":null}}
//! {"end":{"leases":2,"pins":1}}
//! ```
//!
//! One record per line, so that an error can name its line; the `end` line
//! catches a file cut short at a line boundary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

use leasehold::chrono::Utc;
use leasehold::engine::Engine;
use leasehold::{Backend, Error, ExportedLease, ExportedPin, Key, Snapshot};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{CliError, Output};

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    leasehold_export: u32,
    schema: u32,
    taken_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseLine {
    namespace: String,
    name: String,
    holder: Option<String>,
    epoch: u64,
    expires_in_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinLine {
    namespace: String,
    name: String,
    entity: String,
    reason: String,
    expires_in_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    leases: usize,
    pins: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Lease(LeaseLine),
    Pin(PinLine),
    End(EndLine),
}

/// Writes `engine`'s leases to `output` (standard output if `None`);
/// `db_file` is the SQLite file the engine is on, which `output` must not
/// be (or `None` on a server).
pub fn export<B: Backend>(
    engine: &Engine<B>,
    db_file: Option<&Path>,
    output: Option<&Path>,
) -> Result<u8, CliError> {
    if let Some(path) = output {
        // A directory, or a path whose directory is missing or read-only,
        // is a bad output file (exit 5), as for `demo --svg`.
        super::output::writable(path)?;
        if let Some(db) = db_file {
            super::output::not_the_database(path, db)?;
        }
    }
    let snapshot = engine.export()?;
    let mut text = String::new();
    let mut push = |value: &dyn erased::Line| {
        text.push_str(&value.json());
        text.push('\n');
    };
    push(&Header {
        leasehold_export: FORMAT_VERSION,
        // The version of the lease model the lines describe, SQLite's
        // schema version, whichever backend exported them (PostgreSQL's
        // tables hold the same model): an import checks it against its
        // own build's, not against the database it writes to.
        schema: leasehold::SCHEMA_VERSION,
        taken_at: super::leases::time(snapshot.taken_at),
    });
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    for l in &snapshot.leases {
        push(&Line::Lease(LeaseLine {
            namespace: l.key.namespace().to_owned(),
            name: l.key.name().to_owned(),
            holder: l.holder.clone(),
            epoch: l.epoch,
            expires_in_ms: ms(l.remaining),
        }));
    }
    for p in &snapshot.pins {
        push(&Line::Pin(PinLine {
            namespace: p.key.namespace().to_owned(),
            name: p.key.name().to_owned(),
            entity: p.entity.clone(),
            reason: p.reason.clone(),
            expires_in_ms: ms(p.remaining),
        }));
    }
    push(&Line::End(EndLine {
        leases: snapshot.leases.len(),
        pins: snapshot.pins.len(),
    }));
    match output {
        Some(path) => {
            // Ctrl-C (or SIGTERM, SIGHUP) while the file is written must
            // not leave the temporary file behind it (megabytes, hidden).
            let mut signals = signal_hook::iterator::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGHUP,
            ])?;
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    super::output::remove_partial();
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            });
            super::output::write(path, text.as_bytes())?;
        }
        None => super::print::out(&text),
    }
    Ok(0)
}

/// Serialises any of the line types.
mod erased {
    pub trait Line {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Line for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("plain data serialises")
        }
    }
}

fn bad(line: usize, what: impl std::fmt::Display) -> CliError {
    CliError::Invalid(format!(
        "import refused, nothing written: line {line}: {what}"
    ))
}

fn bad_field(line: usize, field: &str, what: impl std::fmt::Display) -> CliError {
    CliError::Invalid(format!(
        "import refused, nothing written: line {line}, field {field}: {what}"
    ))
}

/// Reads one line's JSON, naming the field at fault and leaving out
/// serde's own position (it counts within the line, not the file).
fn from_line<T: serde::de::DeserializeOwned>(line: usize, text: &str) -> Result<T, CliError> {
    let without_position = |e: &serde_json::Error| {
        let text = e.to_string();
        text.rsplit_once(" at line ")
            .map_or(text.clone(), |(what, _)| what.to_owned())
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let what = without_position(e.inner());
        if path.is_empty() || path == "." {
            bad(line, what)
        } else {
            bad_field(line, &path, what)
        }
    })?;
    de.end().map_err(|e| bad(line, without_position(&e)))?;
    Ok(value)
}

/// The longest line an import reads (a lease or pin line is a few hundred
/// bytes at most).
const MAX_LINE: usize = 1 << 20;

/// The lines of an import, each read into a buffer of at most
/// [`MAX_LINE`] bytes: memory stays bounded whatever the input, a line
/// with no end included.
struct Lines<R> {
    input: R,
    /// The number of the last line returned.
    number: usize,
}

impl<R: BufRead> Lines<R> {
    /// The next line's number and text (without its line ending), or
    /// `None` at the end of the input.
    fn next_line(&mut self) -> Result<Option<(usize, String)>, CliError> {
        let n = self.number + 1;
        let mut line = Vec::new();
        let mut any = false;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CliError::Failed(format!("cannot read the import: {e}"))),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let newline = chunk.iter().position(|b| *b == b'\n');
            let take = newline.unwrap_or(chunk.len());
            if line.len() + take > MAX_LINE {
                // Refused without reading the rest of it.
                return Err(bad(
                    n,
                    format!(
                        "longer than {MAX_LINE} bytes (1 MiB), the longest line an import reads"
                    ),
                ));
            }
            line.extend_from_slice(&chunk[..take]);
            self.input.consume(take + usize::from(newline.is_some()));
            if newline.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.number = n;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line)
            .map(|text| Some((n, text)))
            .map_err(|_| bad(n, "not UTF-8 text"))
    }
}

fn key_at(line: usize, namespace: &str, name: &str) -> Result<Key, CliError> {
    Key::new(namespace, name).map_err(|e| match e {
        Error::InvalidArgument { what, .. } => bad_field(line, what, e),
        other => bad(line, other),
    })
}

/// Checks the header: the format, a schema version this leasehold knows,
/// and a time that is one.
fn check_header(header: &Header) -> Result<leasehold::chrono::DateTime<Utc>, CliError> {
    if header.leasehold_export != FORMAT_VERSION {
        return Err(bad_field(
            1,
            "leasehold_export",
            format!("format {} is not {FORMAT_VERSION}", header.leasehold_export),
        ));
    }
    let newest = leasehold::SCHEMA_VERSION;
    if header.schema == 0 {
        return Err(bad_field(
            1,
            "schema",
            "0 is not a leasehold schema version (they start at 1)",
        ));
    }
    if header.schema > newest {
        return Err(bad_field(
            1,
            "schema",
            format!(
                "{} is newer than this leasehold's schema version {newest}: import it with the leasehold that exported it",
                header.schema
            ),
        ));
    }
    leasehold::chrono::DateTime::parse_from_rfc3339(&header.taken_at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            bad_field(
                1,
                "taken_at",
                format!(
                    "{:?} is not an RFC 3339 date like 2026-11-25T14:00:00.000Z ({e})",
                    header.taken_at
                ),
            )
        })
}

/// A parsed export: the snapshot, the line of each of its entries (leases
/// then pins), and the duplicate lines skipped.
struct Parsed {
    snapshot: Snapshot,
    lines: Vec<usize>,
    duplicates: Vec<usize>,
}

/// What a lease line says about its key.
type LeaseSays = (Option<String>, u64, Option<u64>);
/// What a pin line says about its key and entity.
type PinSays = (String, Option<u64>);

/// Parses an export, checking every line before anything is written.
/// A line identical to an earlier one for the same key (or key and entity)
/// is skipped and counted; one that differs is refused, naming both.
fn parse(input: impl Read) -> Result<Parsed, CliError> {
    let mut lines = Lines {
        input: BufReader::new(input),
        number: 0,
    };
    let Some((_, first)) = lines.next_line()? else {
        return Err(bad(1, "empty input: expected a leasehold export"));
    };
    let header: Header = from_line(1, &first)?;
    let taken_at = check_header(&header)?;
    let mut snapshot = Snapshot {
        taken_at,
        leases: Vec::new(),
        pins: Vec::new(),
    };
    // The line number of each entry, leases then pins.
    let mut lease_lines = Vec::new();
    let mut pin_lines = Vec::new();
    let mut duplicates = Vec::new();
    let mut seen_leases: HashMap<Key, (usize, LeaseSays)> = HashMap::new();
    let mut seen_pins: HashMap<(Key, String), (usize, PinSays)> = HashMap::new();
    // Lines of each kind, duplicates included, for the end line's counts.
    let (mut lease_count, mut pin_count) = (0, 0);
    let mut end = None;
    while let Some((n, text)) = lines.next_line()? {
        if let Some(end_line) = end {
            return Err(bad(
                n,
                format!("content after the end line (line {end_line})"),
            ));
        }
        let line: Line = from_line(n, &text)?;
        match line {
            Line::Lease(l) => {
                lease_count += 1;
                if l.holder.is_none() && l.expires_in_ms.is_some() {
                    return Err(bad_field(
                        n,
                        "expires_in_ms",
                        "a vacant lease has no expiry",
                    ));
                }
                let key = key_at(n, &l.namespace, &l.name)?;
                let says = (l.holder.clone(), l.epoch, l.expires_in_ms);
                if let Some((first, said)) = seen_leases.get(&key) {
                    if *said == says {
                        duplicates.push(n);
                        continue;
                    }
                    return Err(bad(
                        n,
                        format!(
                            "{key} is on line {first} already, differently ({} there, {} here); an export has one line per key",
                            lease_words(said),
                            lease_words(&says)
                        ),
                    ));
                }
                seen_leases.insert(key.clone(), (n, says));
                snapshot.leases.push(ExportedLease {
                    key,
                    holder: l.holder,
                    epoch: l.epoch,
                    remaining: l.expires_in_ms.map(Duration::from_millis),
                });
                lease_lines.push(n);
            }
            Line::Pin(p) => {
                pin_count += 1;
                let key = key_at(n, &p.namespace, &p.name)?;
                let says = (p.reason.clone(), p.expires_in_ms);
                let id = (key.clone(), p.entity.clone());
                if let Some((first, said)) = seen_pins.get(&id) {
                    if *said == says {
                        duplicates.push(n);
                        continue;
                    }
                    return Err(bad(
                        n,
                        format!(
                            "the pin of {key} by {} is on line {first} already, differently ({} there, {} here); an export has one line per pin",
                            p.entity,
                            pin_words(said),
                            pin_words(&says)
                        ),
                    ));
                }
                seen_pins.insert(id, (n, says));
                snapshot.pins.push(ExportedPin {
                    key,
                    entity: p.entity,
                    reason: p.reason,
                    remaining: p.expires_in_ms.map(Duration::from_millis),
                });
                pin_lines.push(n);
            }
            Line::End(e) => {
                if e.leases != lease_count || e.pins != pin_count {
                    return Err(bad(
                        n,
                        format!(
                            "the end line counts {} leases and {} pins, the file has {lease_count} and {pin_count}",
                            e.leases, e.pins,
                        ),
                    ));
                }
                end = Some(n);
            }
        }
    }
    if end.is_none() {
        return Err(bad(lines.number + 1, "truncated: the end line is missing"));
    }
    lease_lines.extend(pin_lines);
    Ok(Parsed {
        snapshot,
        lines: lease_lines,
        duplicates,
    })
}

fn lease_words((holder, epoch, expires): &LeaseSays) -> String {
    let expires = expires.map_or("no expiry".to_owned(), |ms| format!("expires_in_ms {ms}"));
    match holder {
        Some(h) => format!("held by {h} in epoch {epoch}, {expires}"),
        None => format!("vacant at epoch {epoch}"),
    }
}

fn pin_words((reason, expires): &PinSays) -> String {
    let expires = expires.map_or("no expiry".to_owned(), |ms| format!("expires_in_ms {ms}"));
    format!("reason {reason:?}, {expires}")
}

pub fn import<B: Backend>(
    engine: &Engine<B>,
    file: Option<&Path>,
    window: Duration,
    out: Output,
) -> Result<u8, CliError> {
    let parsed = match file.filter(|p| *p != Path::new("-")) {
        Some(path) => parse(
            std::fs::File::open(path)
                .map_err(|e| CliError::Failed(format!("cannot read {}: {e}", path.display())))?,
        )?,
        None => parse(std::io::stdin().lock())?,
    };
    let lines = &parsed.lines;
    let summary = engine
        .import(&parsed.snapshot, window)
        .map_err(|e| match e {
            Error::ImportRefused {
                index,
                field,
                reason,
            } => bad_field(lines.get(index).copied().unwrap_or(0), field, reason),
            other => CliError::Lease(other),
        })?;
    let duplicates = &parsed.duplicates;
    if out.json {
        // Built only when printed: a million duplicates make a big value.
        out.json(&json!({
            "tenures": summary.tenures,
            "vacant": summary.vacant,
            "pins": summary.pins,
            "duplicate_lines": duplicates,
        }));
    }
    let n = |count: usize, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    let skipped = if duplicates.is_empty() {
        String::new()
    } else {
        // Named up to a few: a file of a million repeated lines must not
        // make a summary line of megabytes (the JSON has them all).
        const NAMED: usize = 10;
        let mut list: Vec<String> = duplicates
            .iter()
            .take(NAMED)
            .map(ToString::to_string)
            .collect();
        if duplicates.len() > NAMED {
            list.push(format!("and {} more", duplicates.len() - NAMED));
        }
        format!(
            "; skipped {} repeating an earlier line exactly ({} {})",
            n(duplicates.len(), "duplicate line", "duplicate lines"),
            if duplicates.len() == 1 {
                "line"
            } else {
                "lines"
            },
            list.join(", ")
        )
    };
    out.say(format!(
        "imported {}, {} and {}; leases held for {} from now{skipped}",
        n(summary.tenures, "held lease", "held leases"),
        n(summary.vacant, "vacant key", "vacant keys"),
        n(summary.pins, "pin", "pins"),
        super::leases::human(window)
    ));
    Ok(0)
}
