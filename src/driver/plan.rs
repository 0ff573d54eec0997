//! The trackers' bookkeeping and planning, without threads or I/O: what
//! each tracker must do at a given engine time, and what an outcome of the
//! database does to it. A pure function of state and time (tickets are
//! resolved, in memory), so that step-down timing can be tested alone.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::mem;

use crate::core::backend::Changes;
use crate::core::key::Key;
use crate::core::lease::{FOREVER_MS, Record};
use crate::core::ticket::LeaseTicket;

/// A tracker's state, owned by the driver.
pub(crate) struct Track {
    key: Key,
    holder: String,
    guarantee_ms: i64,
    margin_ms: i64,
    release_on_stop: bool,
    /// Whether to claim again after losing leadership (else it stays a
    /// minion for good).
    reclaim: bool,
    /// Whether it has ever led.
    has_led: bool,
    role: Role,
    claim_tickets: Vec<LeaseTicket>,
    leader_tickets: Vec<LeaseTicket>,
    minion_tickets: Vec<LeaseTicket>,
    stop: Option<StopRequest>,
    /// Another connection changed the key: verify or inspect it.
    dirty: bool,
    /// After an error: no new attempt before this instant.
    retry_at: i64,
    backoff_ms: i64,
    last_error: Option<String>,
}

/// Something kept alive until a stop is done (the engine handle of a
/// dropped tracker), dropped outside the driver's lock.
pub(crate) type Keepalive = Box<dyn Any + Send>;

struct StopRequest {
    done: LeaseTicket,
    keepalive: Option<Keepalive>,
}

/// What a tracker believes about its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Must claim as soon as possible (a new tracker, or a vacancy seen).
    Claiming,
    /// Holds the lease in tenure `epoch`, guaranteed until `until`; renews
    /// at `renew_at`, steps down at `minion_at` if it could not.
    Leader {
        epoch: u64,
        until: i64,
        renew_at: i64,
        minion_at: i64,
    },
    /// Someone else holds it; look again at `recheck_at` (its expiry) or
    /// when the key changes.
    Minion { recheck_at: Option<i64> },
}

/// What a tracker is configured with.
pub(crate) struct TrackSpec {
    pub key: Key,
    pub holder: String,
    pub guarantee_ms: i64,
    pub margin_ms: i64,
    pub release_on_stop: bool,
    pub reclaim: bool,
}

/// A snapshot of a tracker, for its handle.
pub(crate) struct TrackStatus {
    pub leader_epoch: Option<u64>,
    /// While leading: until when (engine ms) the lease is guaranteed.
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
}

/// What a ticket asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Question {
    /// Is leadership guaranteed for the guarantee from now?
    Claim,
    /// Tell me when it leads.
    Leader,
    /// Tell me when it no longer does.
    Minion,
}

/// One planned claim or renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClaimItem {
    pub tracker: u64,
    pub key: Key,
    pub holder: String,
    pub duration_ms: i64,
    /// For a leader's renewal: the tenure it extends (never a new one).
    pub renew: Option<u64>,
}

/// One planned release of a stopping tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReleaseItem {
    pub tracker: u64,
    pub key: Key,
    pub holder: String,
}

/// A leader whose key changed: is it still the holder of its tenure?
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VerifyItem {
    pub tracker: u64,
    pub key: Key,
    pub holder: String,
    pub epoch: u64,
}

/// The outcome of one planned write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The claim or renewal succeeded, in tenure `epoch`.
    Won(u64),
    /// Someone else holds the lease.
    Denied,
    /// A renewal found its tenure gone.
    Lost,
    /// A stopping tracker's lease was released (or was not held).
    Released,
    /// The write failed; why.
    Failed(String),
}

/// Work planned for one pass.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Leaders whose key changed: are they still the holder?
    pub verify: Vec<VerifyItem>,
    /// Minions: is the key vacant?
    pub inspect: Vec<(u64, Key)>,
    pub claims: Vec<ClaimItem>,
    pub releases: Vec<ReleaseItem>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.verify.is_empty()
            && self.inspect.is_empty()
            && self.claims.is_empty()
            && self.releases.is_empty()
    }
}

/// How long a key stays held, as a minion sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    Vacant,
    Until(i64),
    Pinned,
}

impl Hold {
    /// How long `rec` stays held, judged at `now`.
    pub(crate) fn of(rec: &Record, now: i64) -> Hold {
        let t = rec.time(now);
        match rec.holder_at(t) {
            None => Hold::Vacant,
            Some(_) if rec.pinned_until_ms == FOREVER_MS => Hold::Pinned,
            Some(_) => Hold::Until(rec.expiry_ms.max(rec.pinned_until_ms)),
        }
    }
}

/// Every tracker of an engine, and the timers that drive them.
#[derive(Default)]
pub(crate) struct Board {
    trackers: HashMap<u64, Track>,
    by_key: HashMap<Key, Vec<u64>>,
    timers: BinaryHeap<Reverse<(i64, u64)>>,
    /// Trackers to look at in the next pass whatever their timers say.
    attention: HashSet<u64>,
    next_id: u64,
    /// The database is gone (its file deleted or replaced): nothing more
    /// can be led.
    lost: bool,
    /// Handles whose stop finished, to drop outside the lock.
    pub graveyard: Vec<Keepalive>,
}

impl Board {
    /// Whether any tracker exists.
    pub(crate) fn is_empty(&self) -> bool {
        self.trackers.is_empty()
    }

    /// Whether a pass must run now, whatever the timers say.
    pub(crate) fn wants_attention(&self) -> bool {
        !self.attention.is_empty()
    }

    /// The earliest timer, if any.
    pub(crate) fn next_timer(&self) -> Option<i64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Adds a tracker; it claims at the next pass.
    pub(crate) fn add(&mut self, spec: TrackSpec) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_key.entry(spec.key.clone()).or_default().push(id);
        self.trackers.insert(
            id,
            Track {
                key: spec.key,
                holder: spec.holder,
                guarantee_ms: spec.guarantee_ms,
                margin_ms: spec.margin_ms,
                release_on_stop: spec.release_on_stop,
                reclaim: spec.reclaim,
                has_led: false,
                role: if self.lost {
                    Role::Minion { recheck_at: None }
                } else {
                    Role::Claiming
                },
                claim_tickets: Vec::new(),
                leader_tickets: Vec::new(),
                minion_tickets: Vec::new(),
                stop: None,
                dirty: false,
                retry_at: i64::MIN,
                backoff_ms: 0,
                last_error: None,
            },
        );
        self.attention.insert(id);
        id
    }

    /// A ticket answering `question` for tracker `id` at `now`: resolved at
    /// once when time alone answers it. The second value says whether the
    /// thread must be woken (a claim ticket asks for a renewal).
    pub(crate) fn ticket(&mut self, id: u64, now: i64, question: Question) -> (LeaseTicket, bool) {
        let Some(track) = self.trackers.get_mut(&id).filter(|t| t.stop.is_none()) else {
            return (LeaseTicket::resolved(false), false);
        };
        let leading = track.is_leading(now);
        match question {
            Question::Leader if leading => (LeaseTicket::resolved(true), false),
            // Time alone says it can no longer lead, whatever the thread
            // has had time to do.
            Question::Minion if !leading => (LeaseTicket::resolved(true), false),
            Question::Claim if matches!(track.role, Role::Minion { .. }) => {
                (LeaseTicket::resolved(false), false)
            }
            Question::Claim if track.guaranteed_for(now) >= track.guarantee_ms => {
                (LeaseTicket::resolved(true), false)
            }
            _ => {
                let ticket = LeaseTicket::pending();
                let list = match question {
                    Question::Claim => &mut track.claim_tickets,
                    Question::Leader => &mut track.leader_tickets,
                    Question::Minion => &mut track.minion_tickets,
                };
                // Forget tickets nobody holds any more.
                list.retain(LeaseTicket::is_held_elsewhere);
                list.push(ticket.clone());
                let wake = question == Question::Claim;
                if wake {
                    self.attention.insert(id);
                }
                (ticket, wake)
            }
        }
    }

    /// The current tenure's epoch and a ticket that fires when it is lost,
    /// taken atomically; `None` unless leading.
    pub(crate) fn leading(&mut self, id: u64, now: i64) -> Option<(u64, LeaseTicket)> {
        let track = self.trackers.get_mut(&id).filter(|t| t.stop.is_none())?;
        match track.role {
            Role::Leader { epoch, .. } if track.is_leading(now) => {
                let lost = LeaseTicket::pending();
                track.minion_tickets.retain(LeaseTicket::is_held_elsewhere);
                track.minion_tickets.push(lost.clone());
                Some((epoch, lost))
            }
            _ => None,
        }
    }

    /// A snapshot of tracker `id` at `now`.
    pub(crate) fn status(&self, id: u64, now: i64) -> TrackStatus {
        match self.trackers.get(&id) {
            Some(track) => TrackStatus {
                leader_epoch: match track.role {
                    Role::Leader { epoch, .. } if track.is_leading(now) => Some(epoch),
                    _ => None,
                },
                lease_until: match track.role {
                    Role::Leader { until, .. } if track.is_leading(now) => Some(until),
                    _ => None,
                },
                last_error: track.last_error.clone(),
            },
            None => TrackStatus {
                leader_epoch: None,
                lease_until: None,
                last_error: None,
            },
        }
    }

    /// Asks to stop tracker `id`; the ticket resolves once it has (after
    /// releasing its lease, if configured). With no thread `running`, it
    /// stops at once. The second value says whether to wake the thread.
    pub(crate) fn stop(
        &mut self,
        id: u64,
        keepalive: Option<Keepalive>,
        running: bool,
    ) -> (LeaseTicket, bool) {
        let Some(track) = self.trackers.get_mut(&id) else {
            return (LeaseTicket::resolved(true), false);
        };
        if let Some(stop) = &track.stop {
            return (stop.done.clone(), false);
        }
        let done = LeaseTicket::pending();
        if !running {
            self.graveyard.extend(keepalive);
            self.finish_stop(id);
            done.resolve(true);
            return (done, false);
        }
        track.stop = Some(StopRequest {
            done: done.clone(),
            keepalive,
        });
        self.attention.insert(id);
        (done, true)
    }

    /// Removes tracker `id`, answering its pending tickets `false` and its
    /// stop request `true`.
    pub(crate) fn finish_stop(&mut self, id: u64) {
        let Some(mut track) = self.trackers.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_key.get_mut(&track.key) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_key.remove(&track.key);
            }
        }
        for t in track
            .claim_tickets
            .drain(..)
            .chain(track.leader_tickets.drain(..))
            .chain(track.minion_tickets.drain(..))
        {
            t.resolve(false);
        }
        if let Some(stop) = track.stop.take() {
            stop.done.resolve(true);
            self.graveyard.extend(stop.keepalive);
        }
    }

    /// Stops every tracker at once (the thread is ending).
    pub(crate) fn finish_all(&mut self) {
        for id in self.trackers.keys().copied().collect::<Vec<_>>() {
            self.finish_stop(id);
        }
    }

    /// Queues the tracker's next deadline.
    fn schedule_next(&mut self, id: u64) {
        let Some(track) = self.trackers.get(&id) else {
            return;
        };
        let next = match track.role {
            Role::Claiming => Some(track.retry_at.max(i64::MIN + 1)),
            Role::Leader {
                renew_at,
                minion_at,
                ..
            } => Some(renew_at.max(track.retry_at).min(minion_at)),
            Role::Minion { recheck_at } => match (recheck_at, track.dirty) {
                (Some(at), _) => Some(at.max(track.retry_at)),
                // It must look at the key again, after any backoff.
                (None, true) => Some(track.retry_at.max(i64::MIN + 1)),
                (None, false) => None,
            },
        };
        if let Some(at) = next {
            self.timers.push(Reverse((at, id)));
        }
    }

    /// Marks the trackers of the keys that changed for a look.
    pub(crate) fn mark_changed(&mut self, changes: &Changes) {
        let ids: Vec<u64> = match changes {
            Changes::None => Vec::new(),
            Changes::Keys(keys) => keys
                .iter()
                .filter_map(|k| self.by_key.get(k))
                .flatten()
                .copied()
                .collect(),
            Changes::All => self.trackers.keys().copied().collect(),
        };
        for id in ids {
            if let Some(track) = self.trackers.get_mut(&id) {
                track.dirty = true;
                self.attention.insert(id);
            }
        }
    }

    /// The database is gone: every tracker counts its tenure as lost and
    /// stays a minion (nothing it could claim would be seen by anyone).
    pub(crate) fn database_lost(&mut self) {
        self.lost = true;
        for track in self.trackers.values_mut() {
            track.become_minion(None);
            track.role = Role::Minion { recheck_at: None };
            track.dirty = false;
            track.last_error = Some("the database file was deleted or replaced".into());
        }
        let trackers = &self.trackers;
        self.attention
            .retain(|id| trackers.get(id).is_some_and(|t| t.stop.is_some()));
    }

    /// Decides what each tracker needing attention must do at `now`.
    pub(crate) fn plan(&mut self, now: i64, stopping: bool) -> Plan {
        let mut due: HashSet<u64> = mem::take(&mut self.attention);
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.insert(id);
        }
        if stopping {
            due.extend(self.trackers.keys().copied());
        }
        let mut plan = Plan::default();
        let mut renewing = false;
        for id in due {
            let Some(track) = self.trackers.get_mut(&id) else {
                continue;
            };
            if track.stop.is_some() || stopping {
                if track.is_leading(now) && track.release_on_stop && !self.lost {
                    plan.releases.push(ReleaseItem {
                        tracker: id,
                        key: track.key.clone(),
                        holder: track.holder.clone(),
                    });
                } else {
                    self.finish_stop(id);
                }
                continue;
            }
            if let Role::Leader { minion_at, .. } = track.role
                && now >= minion_at
            {
                // The guarantee can no longer be kept: step down while the
                // lease is still formally held.
                track.become_minion(None);
                track.dirty = true;
            }
            if self.lost {
                continue;
            }
            if now < track.retry_at {
                self.schedule_next(id);
                continue;
            }
            let dirty = mem::take(&mut track.dirty);
            match track.role {
                Role::Leader {
                    epoch, renew_at, ..
                } => {
                    track.answer_claims(now);
                    if dirty {
                        plan.verify.push(VerifyItem {
                            tracker: id,
                            key: track.key.clone(),
                            holder: track.holder.clone(),
                            epoch,
                        });
                    }
                    if now >= renew_at || !track.claim_tickets.is_empty() {
                        renewing = true;
                    }
                }
                Role::Minion { recheck_at } => {
                    if dirty || recheck_at.is_some_and(|at| now >= at) {
                        plan.inspect.push((id, track.key.clone()));
                    }
                }
                Role::Claiming => {
                    plan.claims.push(ClaimItem {
                        tracker: id,
                        key: track.key.clone(),
                        holder: track.holder.clone(),
                        duration_ms: 2 * track.guarantee_ms,
                        renew: None,
                    });
                }
            }
            self.schedule_next(id);
        }
        if renewing {
            // Renew every leader due within a coalescing window of an eighth
            // of its guarantee, so that renewals falling due together share
            // transactions.
            for (&id, track) in &self.trackers {
                if let Role::Leader {
                    renew_at, epoch, ..
                } = track.role
                {
                    let window = track.guarantee_ms / 8;
                    let asked = !track.claim_tickets.is_empty();
                    if track.stop.is_none()
                        && (asked || now >= renew_at - window)
                        && now >= track.retry_at
                    {
                        plan.claims.push(ClaimItem {
                            tracker: id,
                            key: track.key.clone(),
                            holder: track.holder.clone(),
                            duration_ms: 2 * track.guarantee_ms,
                            renew: Some(epoch),
                        });
                    }
                }
            }
        }
        // One order for the batch's keys (a backend with row locks locks
        // them in it), each tracker once.
        let mut seen = HashSet::new();
        plan.claims.retain(|c| seen.insert(c.tracker));
        plan.claims
            .sort_by(|a, b| (&a.key, a.tracker).cmp(&(&b.key, b.tracker)));
        plan.releases
            .sort_by(|a, b| (&a.key, a.tracker).cmp(&(&b.key, b.tracker)));
        plan
    }

    /// The earliest moment a leader must step down, if any leads: no I/O
    /// may wait past it.
    pub(crate) fn earliest_step_down(&self) -> Option<i64> {
        self.trackers
            .values()
            .filter_map(|t| match t.role {
                Role::Leader { minion_at, .. } if t.stop.is_none() => Some(minion_at),
                _ => None,
            })
            .min()
    }

    /// Steps down every leader whose guarantee can no longer be kept at
    /// `now`.
    pub(crate) fn step_down_overdue(&mut self, now: i64) {
        for (&id, track) in self.trackers.iter_mut() {
            if let Role::Leader { minion_at, .. } = track.role
                && now >= minion_at
            {
                track.become_minion(None);
                track.dirty = true;
                self.attention.insert(id);
            }
        }
    }

    /// A failed look at the keys of `plan`: look again after a pause.
    pub(crate) fn inspection_failed(&mut self, plan: &mut Plan, now: i64) {
        let ids = plan
            .verify
            .iter()
            .map(|v| v.tracker)
            .chain(plan.inspect.iter().map(|i| i.0));
        for id in ids {
            if let Some(t) = self.trackers.get_mut(&id) {
                t.dirty = true;
            }
            self.timers.push(Reverse((now + 10, id)));
        }
        plan.verify.clear();
        plan.inspect.clear();
    }

    /// Applies a look at the keys of `plan`: leaders in `lost` lost their
    /// tenure; minions learn how long their key stays held (`None`: never
    /// claimed), and vacancies become claims.
    pub(crate) fn apply_inspection(
        &mut self,
        plan: &mut Plan,
        lost: &[u64],
        looks: &[(u64, Option<Hold>)],
    ) {
        for &id in lost {
            if let Some(track) = self.trackers.get_mut(&id) {
                track.become_minion(None);
                // Look at the key's new state in the next pass.
                track.dirty = true;
                self.attention.insert(id);
            }
        }
        for &(id, held) in looks {
            let Some(track) = self.trackers.get_mut(&id) else {
                continue;
            };
            if track.stop.is_some() || !matches!(track.role, Role::Minion { .. }) {
                continue;
            }
            if track.has_led && !track.reclaim {
                // Retired: it led once and must not lead again.
                track.role = Role::Minion { recheck_at: None };
                continue;
            }
            match held.unwrap_or(Hold::Vacant) {
                Hold::Vacant => plan.claims.push(ClaimItem {
                    tracker: id,
                    key: track.key.clone(),
                    holder: track.holder.clone(),
                    duration_ms: 2 * track.guarantee_ms,
                    renew: None,
                }),
                Hold::Until(at) => {
                    track.role = Role::Minion {
                        recheck_at: Some(at),
                    };
                    self.schedule_next(id);
                }
                Hold::Pinned => {
                    track.role = Role::Minion { recheck_at: None };
                }
            }
        }
        plan.verify.clear();
        plan.inspect.clear();
        let mut seen = HashSet::new();
        plan.claims.retain(|c| seen.insert(c.tracker));
        plan.claims
            .sort_by(|a, b| (&a.key, a.tracker).cmp(&(&b.key, b.tracker)));
    }

    /// Applies the outcomes of the pass's writes, each with the engine time
    /// at which its transaction began; `now` is the time after them.
    pub(crate) fn apply(&mut self, outcomes: Vec<(u64, i64, Outcome)>, now: i64) {
        for (id, started, outcome) in outcomes {
            let Some(track) = self.trackers.get_mut(&id) else {
                continue;
            };
            match outcome {
                Outcome::Released => {
                    self.finish_stop(id);
                    continue;
                }
                Outcome::Won(_)
                    if track.has_led
                        && !track.reclaim
                        && !matches!(track.role, Role::Leader { .. }) =>
                {
                    // Lost in the meantime: a retired tracker does not take
                    // a new tenure (a renewal of its own tenure keeps
                    // Role::Leader).
                    track.role = Role::Minion { recheck_at: None };
                }
                Outcome::Won(epoch) => {
                    track.has_led = true;
                    let until = started + 2 * track.guarantee_ms;
                    let was = track.role;
                    track.role = Role::Leader {
                        epoch,
                        until,
                        renew_at: started + track.guarantee_ms,
                        minion_at: until - track.margin_ms,
                    };
                    track.backoff_ms = 0;
                    track.retry_at = i64::MIN;
                    let new_tenure = !matches!(was, Role::Leader { epoch: e, .. } if e == epoch);
                    if matches!(was, Role::Leader { .. }) && new_tenure {
                        // The tenure we thought we had ended unseen
                        // (revoked, or lapsed while paused); this is a new
                        // one.
                        for t in track.minion_tickets.drain(..) {
                            t.resolve(true);
                        }
                    }
                    // Also on a renewal: a ticket asked just past the old
                    // `minion_at`, before the renewal was applied, waits for
                    // leadership the tracker now has.
                    if new_tenure || track.is_leading(now) {
                        for t in track.leader_tickets.drain(..) {
                            t.resolve(true);
                        }
                    }
                    track.answer_claims(now);
                }
                Outcome::Denied => {
                    let was_minion = matches!(track.role, Role::Minion { .. });
                    if !was_minion {
                        track.become_minion(None);
                    }
                    for t in track.claim_tickets.drain(..) {
                        t.resolve(false);
                    }
                    // Learn the new holder's expiry on the next pass.
                    track.role = Role::Minion {
                        recheck_at: Some(now),
                    };
                }
                Outcome::Lost => {
                    // Its own tenure was gone when it came to renew: a
                    // leader never claims afresh from a renewal.
                    track.become_minion(None);
                    track.dirty = true;
                }
                Outcome::Failed(why) => {
                    if !matches!(track.role, Role::Leader { .. }) {
                        // Look again (and perhaps claim) after the backoff.
                        track.dirty = true;
                    }
                    track.last_error = Some(why);
                    track.backoff_ms =
                        (track.backoff_ms * 2).clamp(10, (track.guarantee_ms / 4).max(10));
                    track.retry_at = now + track.backoff_ms;
                    for t in track.claim_tickets.drain(..) {
                        t.resolve(false);
                    }
                }
            }
            self.schedule_next(id);
        }
    }
}

impl Track {
    /// Leading and still able to honour the guarantee at `now`.
    fn is_leading(&self, now: i64) -> bool {
        matches!(self.role, Role::Leader { minion_at, .. } if now < minion_at)
    }

    /// How long leadership is still guaranteed from `now`.
    fn guaranteed_for(&self, now: i64) -> i64 {
        match self.role {
            Role::Leader {
                until, minion_at, ..
            } if now < minion_at => until - now,
            _ => 0,
        }
    }

    /// Answers pending claim tickets that the current tenure satisfies.
    fn answer_claims(&mut self, now: i64) {
        if self.guaranteed_for(now) >= self.guarantee_ms {
            for t in self.claim_tickets.drain(..) {
                t.resolve(true);
            }
        }
    }

    fn become_minion(&mut self, recheck_at: Option<i64>) {
        let was_minion = matches!(self.role, Role::Minion { .. });
        self.role = Role::Minion { recheck_at };
        if !was_minion {
            for t in self.minion_tickets.drain(..) {
                t.resolve(true);
            }
            for t in self.claim_tickets.drain(..) {
                t.resolve(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TrackSpec {
        TrackSpec {
            key: Key::new("test", name).expect("key"),
            holder: "me".into(),
            guarantee_ms: 1000,
            margin_ms: 200,
            release_on_stop: true,
            reclaim: true,
        }
    }

    #[test]
    fn a_new_tracker_claims_twice_its_guarantee_at_once() {
        let mut board = Board::default();
        let id = board.add(spec("a"));
        let plan = board.plan(0, false);
        assert_eq!(plan.claims.len(), 1);
        assert_eq!(plan.claims[0].tracker, id);
        assert_eq!(plan.claims[0].duration_ms, 2000);
        assert_eq!(plan.claims[0].renew, None);
        // Until an outcome comes back it stays due (each pass applies the
        // outcomes of its writes before the next plan).
        assert_eq!(board.plan(0, false).claims.len(), 1);
    }

    #[test]
    fn a_leader_renews_at_half_and_steps_down_a_margin_before_expiry() {
        let mut board = Board::default();
        let id = board.add(spec("a"));
        board.plan(0, false);
        board.apply(vec![(id, 0, Outcome::Won(1))], 0);
        let (leader, _) = board.ticket(id, 0, Question::Leader);
        assert_eq!(leader.try_wait(), Some(true));
        let (lost, _) = board.ticket(id, 0, Question::Minion);
        assert_eq!(lost.try_wait(), None);
        // Nothing before the renewal is due (its window opens an eighth of
        // the guarantee early).
        assert!(board.plan(874, false).is_empty());
        assert_eq!(board.next_timer(), Some(1000));
        let plan = board.plan(1000, false);
        assert_eq!(plan.claims.len(), 1);
        assert_eq!(plan.claims[0].renew, Some(1));
        // The renewal failed (and its retries): at until - margin
        // (2000 - 200) the tracker steps down, while the lease is still
        // formally held.
        board.apply(vec![(id, 1000, Outcome::Failed("busy".into()))], 1000);
        assert_eq!(board.status(id, 1799).leader_epoch, Some(1));
        assert_eq!(lost.try_wait(), None);
        board.plan(1800, false);
        assert_eq!(lost.try_wait(), Some(true));
        assert_eq!(board.status(id, 1800).leader_epoch, None);
    }

    #[test]
    fn a_renewal_moves_the_step_down_and_a_lost_tenure_is_not_reclaimed_by_renewing() {
        let mut board = Board::default();
        let id = board.add(spec("a"));
        board.plan(0, false);
        board.apply(vec![(id, 0, Outcome::Won(1))], 0);
        board.plan(1000, false);
        board.apply(vec![(id, 1000, Outcome::Won(1))], 1000);
        assert_eq!(board.status(id, 2500).lease_until, Some(3000));
        assert_eq!(board.earliest_step_down(), Some(2800));
        let (lost, _) = board.ticket(id, 1000, Question::Minion);
        board.plan(2000, false);
        board.apply(vec![(id, 2000, Outcome::Lost)], 2000);
        assert_eq!(lost.try_wait(), Some(true));
        // It looks at the key before claiming anything.
        let plan = board.plan(2000, false);
        assert!(plan.claims.is_empty());
        assert_eq!(plan.inspect.len(), 1);
    }

    #[test]
    fn a_minion_waits_for_the_expiry_it_saw_or_a_change() {
        let mut board = Board::default();
        let id = board.add(spec("a"));
        board.plan(0, false);
        board.apply(vec![(id, 0, Outcome::Denied)], 0);
        let mut plan = board.plan(0, false);
        assert_eq!(plan.inspect.len(), 1);
        board.apply_inspection(&mut plan, &[], &[(id, Some(Hold::Until(5000)))]);
        assert!(plan.claims.is_empty());
        assert!(board.plan(4999, false).is_empty());
        let mut plan = board.plan(5000, false);
        assert_eq!(plan.inspect.len(), 1);
        board.apply_inspection(&mut plan, &[], &[(id, Some(Hold::Vacant))]);
        assert_eq!(plan.claims.len(), 1, "a vacancy becomes a claim");
        // A change elsewhere makes it look at once.
        let mut board2 = Board::default();
        let id2 = board2.add(spec("b"));
        board2.plan(0, false);
        board2.apply(vec![(id2, 0, Outcome::Denied)], 0);
        let mut plan = board2.plan(0, false);
        board2.apply_inspection(&mut plan, &[], &[(id2, Some(Hold::Pinned))]);
        assert!(board2.plan(1_000_000, false).is_empty(), "pinned: no timer");
        let mut keys = HashSet::new();
        keys.insert(Key::new("test", "b").expect("key"));
        board2.mark_changed(&Changes::Keys(keys));
        assert_eq!(board2.plan(1_000_000, false).inspect.len(), 1);
    }

    #[test]
    fn failures_back_off_and_a_stopping_leader_releases() {
        let mut board = Board::default();
        let id = board.add(spec("a"));
        board.plan(0, false);
        board.apply(vec![(id, 0, Outcome::Failed("busy".into()))], 0);
        assert_eq!(board.status(id, 0).last_error.as_deref(), Some("busy"));
        assert!(board.plan(9, false).is_empty(), "backs off 10 ms first");
        assert_eq!(board.plan(10, false).claims.len(), 1);
        let mut board = Board::default();
        let id = board.add(spec("a"));
        board.plan(0, false);
        board.apply(vec![(id, 0, Outcome::Won(1))], 0);
        let (done, wake) = board.stop(id, None, true);
        assert!(wake);
        let plan = board.plan(10, false);
        assert_eq!(plan.releases.len(), 1);
        assert_eq!(done.try_wait(), None);
        board.apply(vec![(id, 10, Outcome::Released)], 10);
        assert_eq!(done.try_wait(), Some(true));
        assert!(board.is_empty());
    }

    #[test]
    fn a_lost_database_steps_every_leader_down_for_good() {
        let mut board = Board::default();
        let id = board.add(spec("a"));
        board.plan(0, false);
        board.apply(vec![(id, 0, Outcome::Won(1))], 0);
        let (lost, _) = board.ticket(id, 0, Question::Minion);
        board.database_lost();
        assert_eq!(lost.try_wait(), Some(true));
        assert!(board.plan(100_000, false).is_empty());
        let later = board.add(spec("b"));
        assert!(board.plan(100_000, false).claims.is_empty());
        assert_eq!(board.status(later, 100_000).leader_epoch, None);
    }

    #[test]
    fn a_batch_claims_each_tracker_once_in_key_order() {
        let mut board = Board::default();
        for name in ["c", "a", "b"] {
            board.add(spec(name));
        }
        let plan = board.plan(0, false);
        let keys: Vec<&str> = plan.claims.iter().map(|c| c.key.name()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }
}
