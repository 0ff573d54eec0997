//! `watch`: lease transitions as they happen, from any process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leasehold::engine::Engine;
use leasehold::{Backend, EventKind, Gap, Key};

use super::leases::{event_json, event_line, time};
use super::{CliError, Output};

/// A held lease as last seen: holder, epoch, expiry.
type Seen = (
    String,
    u64,
    leasehold::chrono::DateTime<leasehold::chrono::Utc>,
);

pub fn watch<B: Backend>(
    engine: &Engine<B>,
    namespace: Option<&str>,
    duration: Option<Duration>,
    out: Output,
) -> Result<u8, CliError> {
    // A duration past what the clock can count (`--duration 500000000000y`)
    // never ends: as no duration at all.
    let stop_at = duration.and_then(|d| Instant::now().checked_add(d));
    // Start from now: the newest event so far, and every held lease.
    let mut last = 0;
    loop {
        let past = engine.wait_for_events(namespace, last, Duration::ZERO)?;
        last = past.cursor();
        if past.is_empty() {
            break;
        }
    }
    // Per key, the epoch whose lapse was said when it ran out; its logged
    // event, when a write notices the lapse, is then not said twice.
    let mut lapse_said: HashMap<Key, u64> = HashMap::new();
    let mut held = held_leases(engine, namespace)?;
    let until = match duration {
        Some(d) => format!("for {}", super::leases::human(d)),
        None => "Ctrl-C to stop".to_owned(),
    };
    out.say(format!(
        "watching {} ({} held); {until}",
        namespace.unwrap_or("all namespaces"),
        held.len()
    ));
    loop {
        let now = Instant::now();
        if stop_at.is_some_and(|t| now >= t) {
            return Ok(0);
        }
        // Wake for new events, or at the earliest expiry to notice lapses.
        let engine_now = engine.now();
        let mut timeout = Duration::from_secs(1);
        for (_, _, expiry) in held.values() {
            timeout = timeout.min((*expiry - engine_now).to_std().unwrap_or_default());
        }
        if let Some(t) = stop_at {
            timeout = timeout.min(t - now);
        }
        let batch = engine.wait_for_events(namespace, last, timeout)?;
        last = batch.cursor();
        if let Some(gap) = batch.gap() {
            // Transitions were lost to the history's retention (or to rows
            // deleted by hand): say so, and start again from the leases.
            out.json(&serde_json::json!({
                "kind": "gap",
                "at": time(engine.now()),
                "missed": gap.missed(),
                "first_missing_id": match gap { Gap::Missed { from, .. } => Some(from), _ => None },
                "message": gap.to_string(),
            }));
            out.say(format!(
                "{}  gap: {gap}; what follows starts again from the leases held now",
                time(engine.now())
            ));
            held = held_leases(engine, namespace)?;
        }
        for (key, event) in batch.events() {
            match event.kind() {
                EventKind::Claimed => {
                    if let Some(lease) = engine.lease(key)?
                        && let (Some(h), Some(e)) = (lease.holder(), lease.expires_at())
                    {
                        held.insert(key.clone(), (h.to_owned(), lease.epoch(), e));
                    }
                }
                EventKind::Released | EventKind::Revoked => {
                    held.remove(key);
                }
                EventKind::Lapsed => {
                    if lapse_said.get(key) == Some(&event.epoch()) {
                        lapse_said.remove(key);
                        continue;
                    }
                    // Said now: not again when its expiry comes due.
                    if held.get(key).is_some_and(|seen| seen.1 == event.epoch()) {
                        held.remove(key);
                    }
                }
                _ => {}
            }
            out.json(&event_json(key, event));
            out.say(event_line(key, event));
        }
        // Leases whose expiry has passed: renewed, or lapsed?
        let engine_now = engine.now();
        let due: Vec<Key> = held
            .iter()
            .filter(|(_, (_, _, e))| *e <= engine_now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let (holder, epoch, expiry) = held.remove(&key).expect("listed");
            match engine.lease(&key)? {
                Some(lease) if lease.is_held() && lease.epoch() == epoch => {
                    // Renewed, or pinned: look again when it may run out.
                    let until = lease
                        .held_until()
                        .unwrap_or(engine_now + Duration::from_secs(60))
                        .max(engine_now + Duration::from_millis(10));
                    held.insert(key, (holder, epoch, until));
                }
                _ => {
                    // The lapse is logged only when a write notices it; say
                    // it now, in the same shape as a logged event.
                    lapse_said.insert(key.clone(), epoch);
                    out.json(&serde_json::json!({
                        "id": null,
                        "at": time(expiry),
                        "namespace": key.namespace(),
                        "name": key.name(),
                        "kind": "lapsed",
                        "holder": holder,
                        "epoch": epoch,
                        "entity": null,
                        "detail": null,
                    }));
                    out.say(format!(
                        "{}  {key}  lapsed    {holder}  epoch {epoch}",
                        time(expiry)
                    ));
                }
            }
        }
    }
}

/// Every lease held now (of `namespace`, or of all).
fn held_leases<B: Backend>(
    engine: &Engine<B>,
    namespace: Option<&str>,
) -> Result<HashMap<Key, Seen>, CliError> {
    let namespaces = match namespace {
        Some(ns) => vec![ns.to_owned()],
        None => engine.namespaces()?,
    };
    let mut held = HashMap::new();
    for ns in namespaces {
        for lease in engine.leases(&ns)? {
            if let (Some(h), Some(e)) = (lease.holder(), lease.expires_at()) {
                held.insert(lease.key().clone(), (h.to_owned(), lease.epoch(), e));
            }
        }
    }
    Ok(held)
}
