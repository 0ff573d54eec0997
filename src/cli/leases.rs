//! `migrate`, `list`, `show`, `history`, `claim`, `release`, `revoke`,
//! `pin`, `unpin`.

use std::time::Duration;

use leasehold::chrono::{DateTime, SecondsFormat, Utc};
use leasehold::engine::{Engine, Tenure};
use leasehold::postgres::{PG_SCHEMA_VERSION, pg_migrations};
use leasehold::{Backend, Event, GuardSql, Key, Lease};
use serde_json::{Value, json};

use super::{CliError, Db, Opened, Output};

/// Prints the SQL of every migration: PostgreSQL's scripts for `schema` when
/// `db` is PostgreSQL, SQLite's otherwise.
pub fn print_sql(db: Option<&Db>, out: Output) -> Result<u8, CliError> {
    let (schema, migrations): (Option<&str>, Vec<(u32, &str, String)>) = match db {
        Some(Db::Postgres { schema, .. }) => {
            if schema.is_empty() || schema.len() > 63 {
                return Err(CliError::Invalid(format!(
                    "invalid schema {schema:?}: must be 1 to 63 bytes long"
                )));
            }
            (
                Some(schema),
                pg_migrations()
                    .iter()
                    .map(|m| (m.version(), m.name(), m.script(schema)))
                    .collect(),
            )
        }
        _ => (
            None,
            leasehold::migrations()
                .iter()
                .map(|m| (m.version(), m.name(), m.script()))
                .collect(),
        ),
    };
    if out.json {
        let all: Vec<Value> = migrations
            .iter()
            .map(|(version, name, sql)| json!({"version": version, "name": name, "sql": sql}))
            .collect();
        match schema {
            Some(schema) => out.json(&json!({ "migrations": all, "schema": schema })),
            None => out.json(&json!({ "migrations": all })),
        }
    } else {
        for (version, name, sql) in &migrations {
            match schema {
                Some(schema) => super::print::line(&format!(
                    "-- leasehold migration {version:04}_{name} (PostgreSQL, schema {schema})"
                )),
                None => super::print::line(&format!("-- leasehold migration {version:04}_{name}")),
            }
            super::print::line(sql);
        }
    }
    Ok(0)
}

/// Which form of the guard `guard` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardForm {
    Statement,
    Predicate,
    Both,
}

/// Prints the guard for `holder`'s tenure of `key` (in `epoch`, if given)
/// in the dialect of `db` (SQLite when none).
pub fn guard_sql(
    db: Option<&Db>,
    key: &Key,
    holder: &str,
    epoch: Option<u64>,
    form: GuardForm,
    out: Output,
) -> Result<u8, CliError> {
    let (dialect, guard) = match db {
        Some(Db::Postgres { schema, .. }) => {
            ("postgres", GuardSql::postgres(schema, key, holder, epoch)?)
        }
        _ => ("sqlite", GuardSql::sqlite(key, holder, epoch)?),
    };
    if out.json {
        let mut value = json!({ "dialect": dialect });
        if form != GuardForm::Predicate {
            value["statement"] = json!(guard.statement());
        }
        if form != GuardForm::Statement {
            value["predicate"] = json!(guard.predicate());
        }
        out.json(&value);
        return Ok(0);
    }
    match form {
        GuardForm::Statement => out.say(guard.statement()),
        GuardForm::Predicate => out.say(guard.predicate()),
        GuardForm::Both => {
            out.say(
                "-- the guard statement: first in the transaction; stop and roll back at its error",
            );
            out.say(format!("{};", guard.statement()));
            out.say("-- the predicate: for one statement's WHERE");
            out.say(guard.predicate());
        }
    }
    Ok(0)
}

/// Applies the schema (opening the engine did) and says its version.
pub fn migrate(engine: &Opened, db: &Db, out: Output) -> Result<u8, CliError> {
    let (place, version) = match engine {
        Opened::Sqlite(engine) => {
            let conn = engine.connection()?;
            (
                engine.path().display().to_string(),
                leasehold::schema_version(&conn)?,
            )
        }
        // A read-write engine opened: the schema is this build's (a newer
        // one is refused).
        Opened::Postgres(_) => (db.describe(), PG_SCHEMA_VERSION),
    };
    out.say(format!("{place}: leasehold schema version {version}"));
    match db {
        Db::Postgres { schema, .. } => out.json(&json!({ "version": version, "schema": schema })),
        Db::Sqlite(_) => out.json(&json!({ "version": version })),
    }
    Ok(0)
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A duration as a short human string: `1m 29.5s`, `250ms`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    // Tenths of a second under a minute, whole seconds above (counted in
    // seconds: milliseconds overflow a u64 past 584 million years).
    let rounded = if ms < 60_000 {
        Duration::from_millis((ms / 100 * 100) as u64)
    } else {
        Duration::from_secs(d.as_secs())
    };
    humantime::format_duration(rounded).to_string()
}

pub fn lease_json(lease: &Lease) -> Value {
    let left = lease
        .expires_at()
        .map(|e| (e - lease.as_of()).num_milliseconds().max(0));
    json!({
        "namespace": lease.key().namespace(),
        "name": lease.key().name(),
        "holder": lease.holder(),
        "held": lease.is_held(),
        "epoch": lease.epoch(),
        "started_at": lease.started_at().map(time),
        "expires_at": lease.expires_at().map(time),
        "left_ms": left,
        "pins": lease.pins().iter().map(|p| json!({
            "entity": p.entity(),
            "reason": p.reason(),
            "pinned_at": time(p.pinned_at()),
            "expires_at": p.expires_at().map(time),
        })).collect::<Vec<_>>(),
    })
}

/// The "time left" column: how long, or who pins it.
fn left(lease: &Lease) -> String {
    let pins = lease
        .pins()
        .iter()
        .map(|p| {
            if p.reason().is_empty() {
                p.entity().to_owned()
            } else {
                format!("{} ({})", p.entity(), p.reason())
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    match lease.expires_at() {
        None if pins.is_empty() => "vacant".into(),
        None => format!("vacant, pinned by {pins}"),
        Some(_) if !pins.is_empty() => format!("pinned by {pins}"),
        Some(e) => human((e - lease.as_of()).to_std().unwrap_or_default()),
    }
}

fn table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        super::print::line(cells.join("  ").trim_end());
    }
}

pub fn list<B: Backend>(
    engine: &Engine<B>,
    namespace: Option<&str>,
    all: bool,
    out: Output,
) -> Result<u8, CliError> {
    let namespaces = match namespace {
        Some(ns) => vec![ns.to_owned()],
        None => engine.namespaces()?,
    };
    let mut leases = Vec::new();
    for ns in &namespaces {
        // Held leases, and pinned vacant keys (a pin is an operator's
        // business); --all adds every other vacant key.
        leases.extend(
            engine
                .all_leases(ns)?
                .into_iter()
                .filter(|l| all || l.is_held() || l.is_pinned()),
        );
    }
    out.json(&Value::Array(leases.iter().map(lease_json).collect()));
    if out.json || out.quiet {
        return Ok(0);
    }
    if leases.is_empty() {
        super::print::line(&format!("no {}leases", if all { "" } else { "held " }));
        return Ok(0);
    }
    let mut rows = vec![vec![
        "KEY".into(),
        "HOLDER".into(),
        "EPOCH".into(),
        "LEFT".into(),
    ]];
    for lease in &leases {
        rows.push(vec![
            lease.key().to_string(),
            lease.holder().unwrap_or("-").to_owned(),
            lease.epoch().to_string(),
            left(lease),
        ]);
    }
    table(&rows);
    Ok(0)
}

pub fn show<B: Backend>(engine: &Engine<B>, key: &Key, out: Output) -> Result<u8, CliError> {
    let Some(lease) = engine.lease(key)? else {
        return Err(CliError::NotHeld(format!(
            "{key} was never claimed or pinned"
        )));
    };
    out.json(&lease_json(&lease));
    out.say(format!("key:      {key}"));
    out.say(format!(
        "holder:   {}",
        lease.holder().unwrap_or("- (vacant)")
    ));
    out.say(format!("epoch:    {}", lease.epoch()));
    if let (Some(start), Some(expiry)) = (lease.started_at(), lease.expires_at()) {
        out.say(format!("since:    {}", time(start)));
        out.say(format!(
            "expires:  {} ({} left)",
            time(expiry),
            left_plain(&lease)
        ));
    }
    for pin in lease.pins() {
        let until = pin.expires_at().map_or("until unpinned".to_owned(), |e| {
            format!("until {}", time(e))
        });
        let reason = if pin.reason().is_empty() {
            String::new()
        } else {
            format!(": {}", pin.reason())
        };
        out.say(format!("pinned:   by {} {until}{reason}", pin.entity()));
    }
    Ok(0)
}

fn left_plain(lease: &Lease) -> String {
    lease
        .expires_at()
        .map(|e| human((e - lease.as_of()).to_std().unwrap_or_default()))
        .unwrap_or_default()
}

pub fn event_json(key: &Key, e: &Event) -> Value {
    json!({
        "id": e.id(),
        "at": time(e.at()),
        "namespace": key.namespace(),
        "name": key.name(),
        "kind": e.kind().as_str(),
        "holder": e.holder(),
        "epoch": e.epoch(),
        "entity": e.entity(),
        "detail": e.detail(),
    })
}

pub fn event_line(key: &Key, e: &Event) -> String {
    let who = match (e.kind().as_str(), e.entity()) {
        ("pinned" | "unpinned", Some(entity)) => format!("by {entity}"),
        _ => e.holder().unwrap_or("-").to_owned(),
    };
    let detail = e
        .detail()
        .filter(|d| !d.is_empty())
        .map(|d| format!("  {d}"))
        .unwrap_or_default();
    format!(
        "{}  {key}  {:<8}  {who}  epoch {}{detail}",
        time(e.at()),
        e.kind().as_str(),
        e.epoch()
    )
}

pub fn history<B: Backend>(
    engine: &Engine<B>,
    key: &Key,
    limit: usize,
    out: Output,
) -> Result<u8, CliError> {
    let events = engine.history(key, limit)?;
    if events.is_empty() && engine.lease(key)?.is_none() {
        return Err(CliError::NotHeld(format!(
            "{key} was never claimed or pinned"
        )));
    }
    out.json(&Value::Array(
        events.iter().map(|e| event_json(key, e)).collect(),
    ));
    if events.is_empty() {
        out.say(format!("no history for {key}"));
    }
    for e in &events {
        out.say(event_line(key, e));
    }
    Ok(0)
}

fn tenure_json<B: Backend>(t: &Tenure<B>) -> Value {
    json!({
        "namespace": t.key().namespace(),
        "name": t.key().name(),
        "holder": t.holder(),
        "epoch": t.epoch(),
        "started_at": time(t.started_at()),
        "expires_at": time(t.expires_at()),
        "extended": t.is_extension(),
    })
}

pub fn claim<B: Backend>(
    engine: &Engine<B>,
    key: &Key,
    holder: &str,
    d: Duration,
    out: Output,
) -> Result<u8, CliError> {
    let t = engine.claim(key, holder, d)?;
    out.json(&tenure_json(&t));
    if t.is_extension() {
        out.say(format!(
            "{holder} already held {key} (epoch {}); extended: held until {}",
            t.epoch(),
            time(t.expires_at())
        ));
    } else {
        out.say(format!(
            "claimed {key} for {holder}: epoch {}, until {}",
            t.epoch(),
            time(t.expires_at())
        ));
    }
    Ok(0)
}

pub fn release<B: Backend>(
    engine: &Engine<B>,
    key: &Key,
    holder: &str,
    out: Output,
) -> Result<u8, CliError> {
    engine.release(key, holder)?;
    out.json(&json!({"released": true, "namespace": key.namespace(), "name": key.name(), "holder": holder}));
    out.say(format!("released {key} ({holder})"));
    Ok(0)
}

pub fn revoke<B: Backend>(engine: &Engine<B>, key: &Key, out: Output) -> Result<u8, CliError> {
    let ended = engine.revoke(key)?;
    out.json(&json!({
        "revoked": ended.is_some(),
        "namespace": key.namespace(),
        "name": key.name(),
        "holder": ended.as_ref().and_then(Lease::holder),
        "epoch": ended.as_ref().map(Lease::epoch),
    }));
    match ended {
        Some(l) => out.say(format!(
            "revoked {key} from {} (epoch {})",
            l.holder().unwrap_or("-"),
            l.epoch()
        )),
        None => out.say(format!("{key} was vacant; nothing to revoke")),
    }
    Ok(0)
}

pub fn pin<B: Backend>(
    engine: &Engine<B>,
    key: &Key,
    entity: &str,
    reason: &str,
    d: Option<Duration>,
    out: Output,
) -> Result<u8, CliError> {
    engine.pin(key, entity, reason, d)?;
    out.json(&json!({"pinned": true, "namespace": key.namespace(), "name": key.name(), "entity": entity}));
    out.say(format!(
        "pinned {key} for {entity}{}",
        d.map(|d| format!(" for {}", human(d))).unwrap_or_default()
    ));
    Ok(0)
}

pub fn unpin<B: Backend>(
    engine: &Engine<B>,
    key: &Key,
    entity: &str,
    out: Output,
) -> Result<u8, CliError> {
    if !engine.unpin(key, entity)? {
        return Err(CliError::NotHeld(format!("{key} has no pin by {entity}")));
    }
    out.json(&json!({"unpinned": true, "namespace": key.namespace(), "name": key.name(), "entity": entity}));
    out.say(format!("unpinned {key} for {entity}"));
    Ok(0)
}
