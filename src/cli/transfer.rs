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

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

use leasehold::{Engine, Error, ExportedLease, ExportedPin, Key, Snapshot};
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

pub fn export(engine: &Engine, output: Option<&Path>) -> Result<u8, CliError> {
    if let Some(path) = output {
        super::output::not_the_database(path, engine.path())?;
    }
    let snapshot = engine.export()?;
    let mut text = String::new();
    let mut push = |value: &dyn erased::Line| {
        text.push_str(&value.json());
        text.push('\n');
    };
    push(&Header {
        leasehold_export: FORMAT_VERSION,
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
        Some(path) => super::output::write(path, text.as_bytes())?,
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

/// The text of line `n`, refused whole if it is not UTF-8.
fn text_of(n: usize, text: std::io::Result<String>) -> Result<String, CliError> {
    text.map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => bad(n, "not UTF-8 text"),
        _ => CliError::Failed(format!("cannot read the import: {e}")),
    })
}

fn key_at(line: usize, namespace: &str, name: &str) -> Result<Key, CliError> {
    Key::new(namespace, name).map_err(|e| match e {
        Error::InvalidArgument { what, .. } => bad_field(line, what, e),
        other => bad(line, other),
    })
}

/// Parses an export, checking every line before anything is written.
fn parse(input: impl Read) -> Result<(Snapshot, Vec<usize>), CliError> {
    let mut lines = BufReader::new(input).lines().enumerate();
    let (_, first) = lines
        .next()
        .ok_or_else(|| bad(1, "empty input: expected a leasehold export"))?;
    let first = text_of(1, first)?;
    let header: Header = from_line(1, &first)?;
    if header.leasehold_export != FORMAT_VERSION {
        return Err(bad_field(
            1,
            "leasehold_export",
            format!("format {} is not {FORMAT_VERSION}", header.leasehold_export),
        ));
    }
    let mut snapshot = Snapshot {
        taken_at: leasehold::chrono::Utc::now(),
        leases: Vec::new(),
        pins: Vec::new(),
    };
    // The line number of each entry, leases then pins.
    let mut lease_lines = Vec::new();
    let mut pin_lines = Vec::new();
    let mut end = None;
    for (i, text) in lines {
        let n = i + 1;
        let text = text_of(n, text)?;
        if let Some(end_line) = end {
            return Err(bad(
                n,
                format!("content after the end line (line {end_line})"),
            ));
        }
        let line: Line = from_line(n, &text)?;
        match line {
            Line::Lease(l) => {
                if l.holder.is_none() && l.expires_in_ms.is_some() {
                    return Err(bad_field(
                        n,
                        "expires_in_ms",
                        "a vacant lease has no expiry",
                    ));
                }
                snapshot.leases.push(ExportedLease {
                    key: key_at(n, &l.namespace, &l.name)?,
                    holder: l.holder,
                    epoch: l.epoch,
                    remaining: l.expires_in_ms.map(Duration::from_millis),
                });
                lease_lines.push(n);
            }
            Line::Pin(p) => {
                snapshot.pins.push(ExportedPin {
                    key: key_at(n, &p.namespace, &p.name)?,
                    entity: p.entity,
                    reason: p.reason,
                    remaining: p.expires_in_ms.map(Duration::from_millis),
                });
                pin_lines.push(n);
            }
            Line::End(e) => {
                if e.leases != snapshot.leases.len() || e.pins != snapshot.pins.len() {
                    return Err(bad(
                        n,
                        format!(
                            "the end line counts {} leases and {} pins, the file has {} and {}",
                            e.leases,
                            e.pins,
                            snapshot.leases.len(),
                            snapshot.pins.len()
                        ),
                    ));
                }
                end = Some(n);
            }
        }
    }
    if end.is_none() {
        return Err(bad(
            lease_lines.len() + pin_lines.len() + 2,
            "truncated: the end line is missing",
        ));
    }
    lease_lines.extend(pin_lines);
    Ok((snapshot, lease_lines))
}

pub fn import(
    engine: &Engine,
    file: Option<&Path>,
    window: Duration,
    out: Output,
) -> Result<u8, CliError> {
    let (snapshot, lines) = match file.filter(|p| *p != Path::new("-")) {
        Some(path) => parse(
            std::fs::File::open(path)
                .map_err(|e| CliError::Failed(format!("cannot read {}: {e}", path.display())))?,
        )?,
        None => parse(std::io::stdin().lock())?,
    };
    let summary = engine.import(&snapshot, window).map_err(|e| match e {
        Error::ImportRefused {
            index,
            field,
            reason,
        } => bad_field(lines.get(index).copied().unwrap_or(0), field, reason),
        other => CliError::Lease(other),
    })?;
    out.json(&json!({"tenures": summary.tenures, "vacant": summary.vacant, "pins": summary.pins}));
    let n = |count: usize, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    out.say(format!(
        "imported {}, {} and {}; leases held for {} from now",
        n(summary.tenures, "held lease", "held leases"),
        n(summary.vacant, "vacant key", "vacant keys"),
        n(summary.pins, "pin", "pins"),
        super::leases::human(window)
    ));
    Ok(0)
}
