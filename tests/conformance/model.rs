//! Model-based test: random sequences of operations applied side by side to
//! a pure model of DESIGN.md's semantics and to an engine on the backend
//! under test (on a manual clock); every result and every error must agree.
//!
//! The model is written from the contract, not from the engine's code:
//! "held" means a holder whose expiry, or a live pin, lies after now; a
//! claim by the holder extends without shortening; any other successful
//! claim starts epoch + 1; pins never revive a tenure that ran out; engine
//! time never goes back: it is the clock plus an offset that grows by as
//! much as the clock is seen behind the time already used, so after a step
//! back it goes on from there at the clock's rate. proptest keeps shrunk failures in
//! `tests/conformance/model.proptest-regressions`, replayed on every run
//! (for every backend). The case count is the harness's
//! (`Harness::MODEL_CASES`), or `LEASEHOLD_MODEL_CASES`.

use std::collections::BTreeMap;
use std::time::Duration;

use leasehold::engine::{Engine, LeaseToken, Tenure};
use leasehold::{Error, Key, ManualClock};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::harness::{Harness, Options};
use crate::support::t0;

const KEYS: usize = 2;
const HOLDERS: usize = 3;
const ENTITIES: usize = 2;

#[derive(Clone, Debug)]
enum Step {
    Claim {
        k: usize,
        h: usize,
        ms: i64,
    },
    Extend {
        k: usize,
        h: usize,
        ms: i64,
    },
    Release {
        k: usize,
        h: usize,
    },
    Revoke {
        k: usize,
    },
    Pin {
        k: usize,
        e: usize,
        ms: Option<i64>,
    },
    Unpin {
        k: usize,
        e: usize,
    },
    Advance {
        ms: i64,
    },
    Rewind {
        ms: i64,
    },
    Check {
        k: usize,
        h: usize,
        fenced: bool,
    },
    GuardedWrite {
        k: usize,
        h: usize,
        fenced: bool,
    },
    Read {
        k: usize,
    },
    /// Later steps go through the other engine (same file, same clock):
    /// what one engine remembers must never make it answer differently
    /// after the other changed the lease.
    Switch,
}

fn step() -> impl Strategy<Value = Step> {
    let k = 0..KEYS;
    let h = 0..HOLDERS;
    prop_oneof![
        4 => (k.clone(), h.clone(), 1i64..100).prop_map(|(k, h, ms)| Step::Claim { k, h, ms }),
        2 => (k.clone(), h.clone(), 1i64..100).prop_map(|(k, h, ms)| Step::Extend { k, h, ms }),
        2 => (k.clone(), h.clone()).prop_map(|(k, h)| Step::Release { k, h }),
        1 => k.clone().prop_map(|k| Step::Revoke { k }),
        1 => (k.clone(), 0..ENTITIES, proptest::option::of(1i64..150)).prop_map(|(k, e, ms)| Step::Pin { k, e, ms }),
        1 => (k.clone(), 0..ENTITIES).prop_map(|(k, e)| Step::Unpin { k, e }),
        3 => (0i64..120).prop_map(|ms| Step::Advance { ms }),
        1 => (0i64..200).prop_map(|ms| Step::Rewind { ms }),
        2 => (k.clone(), h.clone(), any::<bool>()).prop_map(|(k, h, fenced)| Step::Check { k, h, fenced }),
        2 => (k.clone(), h.clone(), any::<bool>()).prop_map(|(k, h, fenced)| Step::GuardedWrite { k, h, fenced }),
        1 => k.prop_map(|k| Step::Read { k }),
    ]
}

/// What an operation returned, in a form both sides produce.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Tenure {
        epoch: u64,
        extended: bool,
        expiry: i64,
    },
    Denied(String),
    NotHeld(Option<String>),
    Done,
    Revoked(Option<(String, u64)>),
    Unpinned(bool),
    Passes(bool),
    Lease(Option<(Option<String>, u64, bool)>),
}

// The model.

#[derive(Clone, Debug, Default)]
struct Row {
    holder: Option<usize>,
    epoch: u64,
    expiry: i64,
    /// entity -> expiry (None: until unpinned); expired pins stay until a
    /// pin or unpin of the key prunes them, as in the engine.
    pins: BTreeMap<usize, Option<i64>>,
}

impl Row {
    fn pinned(&self, t: i64) -> bool {
        self.pins.values().any(|e| e.is_none_or(|e| e > t))
    }

    fn holder_at(&self, t: i64) -> Option<usize> {
        self.holder.filter(|_| self.expiry > t || self.pinned(t))
    }

    /// A tenure that ran out ends before anything else changes.
    fn settle(&mut self, t: i64) {
        if self.holder_at(t).is_none() {
            self.holder = None;
        }
    }

    fn prune(&mut self, t: i64) {
        self.pins.retain(|_, e| e.is_none_or(|e| e > t));
    }
}

#[derive(Debug)]
struct Model {
    clock: i64,
    /// Added to the clock's readings; grows when the clock steps back.
    offset: i64,
    /// The latest instant the engine has read (none yet: far in the past).
    now: i64,
    rows: BTreeMap<usize, Row>,
    /// The epoch of each holder's latest successful claim per key, for
    /// fenced tokens.
    tenures: BTreeMap<(usize, usize), u64>,
}

fn name(h: usize) -> String {
    format!("h{h}")
}

impl Default for Model {
    fn default() -> Model {
        Model {
            clock: 0,
            offset: 0,
            now: i64::MIN / 2,
            rows: BTreeMap::new(),
            tenures: BTreeMap::new(),
        }
    }
}

impl Model {
    /// Engine time at an operation that reads the clock: the clock plus
    /// the offset, which grows whenever that would be behind the time
    /// already read (the clock stepped back).
    fn tick(&mut self) -> i64 {
        let at = self.clock + self.offset;
        if at < self.now {
            self.offset += self.now - at;
        }
        self.now = self.clock + self.offset;
        self.now
    }

    fn apply(&mut self, s: &Step) -> Outcome {
        // Moving the clock reads nothing; neither does a check without a
        // token to check.
        let reads = match *s {
            Step::Advance { .. } | Step::Rewind { .. } | Step::Switch => false,
            Step::Extend { k, h, .. } => self.tenures.contains_key(&(k, h)),
            Step::Check { k, h, fenced } | Step::GuardedWrite { k, h, fenced } => {
                !fenced || self.tenures.contains_key(&(k, h))
            }
            _ => true,
        };
        let t = if reads { self.tick() } else { self.now };
        match *s {
            Step::Claim { k, h, ms } => {
                let row = self.rows.entry(k).or_default();
                row.settle(t);
                match row.holder {
                    Some(x) if x == h => {
                        row.expiry = row.expiry.max(t + ms);
                        Outcome::Tenure {
                            epoch: row.epoch,
                            extended: true,
                            expiry: row.expiry,
                        }
                    }
                    Some(x) => Outcome::Denied(name(x)),
                    None => {
                        row.holder = Some(h);
                        row.epoch += 1;
                        row.expiry = t + ms;
                        self.tenures.insert((k, h), row.epoch);
                        Outcome::Tenure {
                            epoch: row.epoch,
                            extended: false,
                            expiry: row.expiry,
                        }
                    }
                }
            }
            Step::Extend { k, h, ms } => {
                let Some(&epoch) = self.tenures.get(&(k, h)) else {
                    return Outcome::Done; // no tenure to extend: skipped on both sides
                };
                let row = self.rows.get_mut(&k).expect("claimed before");
                if row.holder_at(t) == Some(h) && row.epoch == epoch {
                    row.expiry = row.expiry.max(t + ms);
                    Outcome::Tenure {
                        epoch,
                        extended: true,
                        expiry: t + ms,
                    }
                } else {
                    Outcome::NotHeld(row.holder_at(t).map(name))
                }
            }
            Step::Release { k, h } => match self.rows.get_mut(&k) {
                Some(row) if row.holder_at(t) == Some(h) => {
                    row.holder = None;
                    row.expiry = t;
                    Outcome::Done
                }
                Some(row) => Outcome::NotHeld(row.holder_at(t).map(name)),
                None => Outcome::NotHeld(None),
            },
            Step::Revoke { k } => match self.rows.get_mut(&k) {
                Some(row) => match row.holder_at(t) {
                    Some(x) => {
                        let ended = (name(x), row.epoch);
                        row.holder = None;
                        row.expiry = t;
                        Outcome::Revoked(Some(ended))
                    }
                    None => {
                        row.settle(t);
                        Outcome::Revoked(None)
                    }
                },
                None => Outcome::Revoked(None),
            },
            Step::Pin { k, e, ms } => {
                let row = self.rows.entry(k).or_default();
                row.settle(t);
                row.pins.insert(e, ms.map(|ms| t + ms));
                row.prune(t);
                Outcome::Done
            }
            Step::Unpin { k, e } => match self.rows.get_mut(&k) {
                Some(row) if row.pins.contains_key(&e) => {
                    row.settle(t);
                    row.pins.remove(&e);
                    row.prune(t);
                    Outcome::Unpinned(true)
                }
                _ => Outcome::Unpinned(false),
            },
            Step::Advance { ms } => {
                self.clock += ms;
                Outcome::Done
            }
            Step::Rewind { ms } => {
                self.clock -= ms;
                Outcome::Done
            }
            Step::Check { k, h, fenced } | Step::GuardedWrite { k, h, fenced } => {
                let epoch = if fenced {
                    match self.tenures.get(&(k, h)) {
                        Some(&e) => Some(e),
                        None => return Outcome::Done, // no fenced token to check
                    }
                } else {
                    None
                };
                let passes = self.rows.get(&k).is_some_and(|row| {
                    row.holder_at(t) == Some(h) && epoch.is_none_or(|e| e == row.epoch)
                });
                Outcome::Passes(passes)
            }
            Step::Switch => Outcome::Done,
            Step::Read { k } => Outcome::Lease(
                self.rows
                    .get(&k)
                    .map(|row| (row.holder_at(t).map(name), row.epoch, row.pinned(t))),
            ),
        }
    }
}

// The engine side.

struct Real<H: Harness> {
    _db: H::Database,
    /// Two engines on the one database; `cur` is the one steps go through.
    engines: Vec<Engine<H::Backend>>,
    cur: usize,
    clock: ManualClock,
    keys: Vec<Key>,
    tenures: BTreeMap<(usize, usize), Tenure<H::Backend>>,
    /// The names of the values guarded writes attempted.
    writes: Vec<String>,
}

fn ms_of(t: leasehold::chrono::DateTime<leasehold::chrono::Utc>) -> i64 {
    (t - t0()).num_milliseconds()
}

impl<H: Harness> Real<H> {
    fn new() -> Real<H> {
        let db = H::database();
        let clock = ManualClock::new(t0());
        let engines: Vec<Engine<H::Backend>> = (0..2)
            .map(|_| H::open(&db, Options::manual(&clock)).expect("engine"))
            .collect();
        let keys = (0..KEYS)
            .map(|k| Key::new("model", format!("k{k}")).expect("key"))
            .collect();
        Real {
            _db: db,
            engines,
            cur: 0,
            clock,
            keys,
            tenures: BTreeMap::new(),
            writes: Vec::new(),
        }
    }

    fn token(&self, k: usize, h: usize, fenced: bool) -> Option<LeaseToken<H::Backend>> {
        if fenced {
            self.tenures.get(&(k, h)).map(Tenure::token)
        } else {
            Some(
                self.engines[self.cur]
                    .token(&self.keys[k], &name(h))
                    .expect("token"),
            )
        }
    }

    fn apply(&mut self, s: &Step) -> Outcome {
        if let Step::Switch = s {
            self.cur = 1 - self.cur;
            return Outcome::Done;
        }
        let e = &self.engines[self.cur];
        let unexpected = |err: Error| -> Outcome { panic!("{s:?}: unexpected error {err}") };
        match *s {
            Step::Claim { k, h, ms } => {
                match e.claim(&self.keys[k], &name(h), Duration::from_millis(ms as u64)) {
                    Ok(t) => {
                        if !t.is_extension() {
                            self.tenures.insert((k, h), t.clone());
                        }
                        Outcome::Tenure {
                            epoch: t.epoch(),
                            extended: t.is_extension(),
                            expiry: ms_of(t.expires_at()),
                        }
                    }
                    Err(Error::ClaimDenied { current_holder, .. }) => {
                        Outcome::Denied(current_holder)
                    }
                    Err(err) => unexpected(err),
                }
            }
            Step::Extend { k, h, ms } => {
                let Some(t) = self.tenures.get(&(k, h)) else {
                    return Outcome::Done;
                };
                match e.extend(t, Duration::from_millis(ms as u64)) {
                    Ok(t) => Outcome::Tenure {
                        epoch: t.epoch(),
                        extended: true,
                        expiry: ms_of(e.now()) + ms,
                    },
                    Err(Error::NotHeld { current_holder, .. }) => Outcome::NotHeld(current_holder),
                    Err(err) => unexpected(err),
                }
            }
            Step::Release { k, h } => match e.release(&self.keys[k], &name(h)) {
                Ok(()) => Outcome::Done,
                Err(Error::NotHeld { current_holder, .. }) => Outcome::NotHeld(current_holder),
                Err(err) => unexpected(err),
            },
            Step::Revoke { k } => Outcome::Revoked(
                e.revoke(&self.keys[k])
                    .unwrap_or_else(|err| panic!("{err}"))
                    .map(|l| (l.holder().unwrap_or("").to_owned(), l.epoch())),
            ),
            Step::Pin { k, e: ent, ms } => {
                e.pin(
                    &self.keys[k],
                    &format!("e{ent}"),
                    "",
                    ms.map(|ms| Duration::from_millis(ms as u64)),
                )
                .unwrap_or_else(|err| panic!("{err}"));
                Outcome::Done
            }
            Step::Unpin { k, e: ent } => Outcome::Unpinned(
                e.unpin(&self.keys[k], &format!("e{ent}"))
                    .unwrap_or_else(|err| panic!("{err}")),
            ),
            Step::Advance { ms } => {
                self.clock.advance(Duration::from_millis(ms as u64));
                Outcome::Done
            }
            Step::Rewind { ms } => {
                self.clock.step_back(Duration::from_millis(ms as u64));
                Outcome::Done
            }
            Step::Check { k, h, fenced } => match self.token(k, h, fenced) {
                None => Outcome::Done,
                Some(token) => match token.check() {
                    Ok(()) => Outcome::Passes(true),
                    Err(Error::GuardFailed { .. }) => Outcome::Passes(false),
                    Err(err) => unexpected(err),
                },
            },
            Step::GuardedWrite { k, h, fenced } => match self.token(k, h, fenced) {
                None => Outcome::Done,
                Some(token) => {
                    let name = format!("w{}", self.writes.len());
                    self.writes.push(name.clone());
                    match H::guarded_write(e, Some(&token), &name, "1") {
                        Ok(_) => Outcome::Passes(true),
                        Err(Error::GuardFailed { .. }) => Outcome::Passes(false),
                        Err(err) => unexpected(err),
                    }
                }
            },
            Step::Switch => Outcome::Done,
            Step::Read { k } => Outcome::Lease(
                e.lease(&self.keys[k])
                    .unwrap_or_else(|err| panic!("{err}"))
                    .map(|l| (l.holder().map(str::to_owned), l.epoch(), l.is_pinned())),
            ),
        }
    }
}

/// Applies `steps` to both and compares, step by step.
fn agree<H: Harness>(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut real = Real::<H>::new();
    for (i, s) in steps.iter().enumerate() {
        let want = model.apply(s);
        let got = real.apply(s);
        prop_assert_eq!(&got, &want, "step {} ({:?}) of {:?}", i, s, steps);
    }
    // Writes through the guard: exactly the passing ones landed.
    let passed = steps
        .iter()
        .zip({
            let mut m = Model::default();
            steps.iter().map(move |s| m.apply(s)).collect::<Vec<_>>()
        })
        .filter(|(s, o)| matches!(s, Step::GuardedWrite { .. }) && *o == Outcome::Passes(true))
        .count() as i64;
    let rows = real
        .writes
        .iter()
        .filter(|name| {
            H::read_back(&real.engines[0], name)
                .expect("read back")
                .is_some()
        })
        .count() as i64;
    prop_assert_eq!(rows, passed);
    Ok(())
}

/// Runs `agree` on `cases` sequences drawn from `strategy`, keeping and
/// replaying failures as the `proptest!` macro does.
fn run<H: Harness>(strategy: impl Strategy<Value = Vec<Step>>) {
    let cases = std::env::var("LEASEHOLD_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(H::MODEL_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |steps| agree::<H>(&steps)) {
        panic!("{}: {e}\n{runner}", H::NAME);
    }
}

pub fn the_engine_agrees_with_the_model<H: Harness>() {
    run::<H>(proptest::collection::vec(step(), 1..60));
}

/// The same through two engines taking turns. Without clock rewinds:
/// each engine keeps its own high-water mark of the time, which the
/// single-engine model does not describe.
pub fn two_engines_agree_with_the_model<H: Harness>() {
    run::<H>(proptest::collection::vec(
        prop_oneof![
            9 => step().prop_filter("no rewinds", |s| !matches!(s, Step::Rewind { .. })),
            2 => Just(Step::Switch),
        ],
        1..60,
    ));
}

/// Shrunk failures found while building this test, kept as plain cases.
pub fn regressions<H: Harness>() {
    use Step::*;
    let cases: Vec<Vec<Step>> = vec![
        // A pin on a lapsed tenure must not revive it.
        vec![
            Claim { k: 0, h: 0, ms: 10 },
            Advance { ms: 20 },
            Pin {
                k: 0,
                e: 0,
                ms: None,
            },
            Check {
                k: 0,
                h: 0,
                fenced: true,
            },
            Claim { k: 0, h: 1, ms: 10 },
        ],
        // A clock stepping back does not revive an expired lease.
        vec![
            Claim { k: 1, h: 2, ms: 50 },
            Advance { ms: 60 },
            Read { k: 1 },
            Rewind { ms: 100 },
            GuardedWrite {
                k: 1,
                h: 2,
                fenced: false,
            },
            Claim { k: 1, h: 0, ms: 5 },
        ],
        // An expired pin is still removed by its unpin.
        vec![
            Pin {
                k: 0,
                e: 1,
                ms: Some(5),
            },
            Advance { ms: 10 },
            Unpin { k: 0, e: 1 },
            Unpin { k: 0, e: 1 },
        ],
    ];
    for steps in cases {
        agree::<H>(&steps).unwrap_or_else(|e| panic!("{e}"));
    }
}
