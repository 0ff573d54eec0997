//! The conformance suite: every semantic test of the lease contract, written
//! once over a [`Harness`](harness::Harness) and run for every backend.
//!
//! # How a backend joins
//!
//! 1. Implement [`Harness`](harness::Harness) for it in `harness.rs`: a
//!    fresh database per test (a temp file; a fresh schema on a server,
//!    dropped when the handle drops — setup and teardown are plain blocking
//!    calls), opening engines on it with the given [`Options`](harness::Options),
//!    the backend's own caller transaction ([`Step`](harness::Step)s: check
//!    a token, write a value, claim, release, run code while it is open),
//!    reading a value back, and — if it can — the multi-process side
//!    ([`Processes`](harness::Processes)).
//! 2. Add one line to the `backends` of the `conformance!` invocation
//!    below (as `postgres: crate::harness::PostgresHarness,` is). Its tests
//!    are then `cargo test --test conformance postgres::`.
//!
//! PostgreSQL's tests run on a throwaway server the test process starts
//! from the machine's binaries (or `$LEASEHOLD_TEST_PG`), a database per
//! test; see `leasehold::testing::PgServer`.
//!
//! # What a backend may skip
//!
//! Only what needs worker processes: the history checker's nemesis runs
//! (kills, pauses, clock steps, held locks, pool exhaustion, crashes) and
//! the kit's recorded writes they check. A backend whose
//! [`Harness::processes`](harness::Harness::processes) is `None` (the
//! in-memory store: it lives and dies with one process) passes those as
//! "not applicable", saying so on standard error. Every other test —
//! semantics, guards, trackers, waiting, bad input, the model — must pass
//! as written; a test that cannot be expressed through the harness belongs
//! in a backend's own test file (SQLite's: `tests/semantics.rs`,
//! `guards.rs`, `in_txn.rs`, `tracker.rs`, …), not behind a skip.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod guards;
mod harness;
mod leadership;
mod model;
mod nemesis;
mod semantics;
mod tracker;

/// The outcome of a conformance test: `()` or a `Result` whose error
/// fails the test.
trait Outcome {
    fn report(self);
}

impl Outcome for () {
    fn report(self) {}
}

impl<E: std::fmt::Debug> Outcome for Result<(), E> {
    fn report(self) {
        if let Err(e) = self {
            panic!("{e:?}");
        }
    }
}

/// How long one test may run before it counts as hung. The slowest (the
/// nemesis runs) take well under a minute even on a loaded machine.
const HANG_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs one test; if it is still running after [`HANG_LIMIT`] (a wait
/// nothing will end), names it and aborts the test process, so that a hang
/// fails the run within minutes instead of holding it until CI's own limit.
fn watched<O: Outcome>(name: &'static str, test: impl FnOnce() -> O) {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(HANG_LIMIT) {
            eprintln!("conformance: {name} still running after {HANG_LIMIT:?}: it hangs; aborting");
            std::process::abort();
        }
    });
    test().report();
    drop(done);
}

/// Registers every test once per backend: `mod <backend> { #[test] fn
/// <test>() { crate::<module>::<test>::<Harness>() } … }`.
macro_rules! conformance {
    (backends: [$($(#[$attr:meta])* $backend:ident: $harness:ty),+ $(,)?], tests: $tests:tt $(,)?) => {
        $(conformance!(@backend $(#[$attr])* $backend, $harness, $tests);)+
    };
    (@backend $(#[$attr:meta])* $backend:ident, $harness:ty, [$($module:ident::$test:ident),+ $(,)?]) => {
        $(#[$attr])*
        mod $backend {
            $(
                #[test]
                fn $test() {
                    crate::watched(
                        concat!(stringify!($backend), "::", stringify!($test)),
                        crate::$module::$test::<$harness>,
                    );
                }
            )+
        }
    };
}

conformance! {
    backends: [
        sqlite: crate::harness::SqliteHarness,
        memory: crate::harness::MemoryHarness,
        #[cfg(feature = "postgres")]
        postgres: crate::harness::PostgresHarness,
    ],
    tests: [
        // DESIGN.md semantics 1–5 and 7, history, listing, import.
        semantics::claiming_a_vacant_key_starts_epoch_one,
        semantics::the_holder_reclaiming_extends_with_the_same_epoch,
        semantics::reclaiming_after_changes_elsewhere_answers_as_a_fresh_claim_would,
        semantics::extend_all_renews_each_tenure_or_says_why_not,
        semantics::another_holder_is_denied_by_name,
        semantics::the_previous_holder_reclaiming_after_a_lapse_gets_a_new_epoch,
        semantics::keys_are_isolated_by_namespace_and_name,
        semantics::the_lease_is_held_until_call_start_plus_duration,
        semantics::sub_millisecond_durations_round_up,
        semantics::the_guarantee_counts_from_the_instant_not_the_millisecond,
        semantics::an_extension_never_shortens,
        semantics::release_ends_the_tenure_and_keeps_the_epoch_counter,
        semantics::release_by_a_non_holder_is_not_held_and_changes_nothing,
        semantics::releasing_a_lapsed_lease_is_not_held,
        semantics::revoke_ends_anyones_tenure,
        semantics::a_pinned_lease_does_not_expire_and_others_are_still_denied,
        semantics::pins_are_a_multiset_of_entities,
        semantics::pinning_a_vacant_key_pins_the_next_tenure,
        semantics::a_pin_can_expire_by_itself,
        semantics::pinning_a_lapsed_tenure_does_not_revive_it,
        semantics::revoking_a_pinned_lease_keeps_the_pin_for_the_next_tenure,
        semantics::a_clock_stepping_back_does_not_revive_an_expired_lease,
        semantics::a_clock_stepping_back_does_not_lengthen_a_tenure,
        semantics::extending_a_tenure_written_by_a_clock_ahead_measures_from_the_row,
        semantics::claiming_again_a_tenure_written_by_a_clock_ahead_measures_from_the_row,
        semantics::a_new_engine_never_starts_behind_the_persisted_time,
        semantics::a_clock_step_back_is_persisted_at_once_for_engines_opened_later,
        semantics::each_lease_row_remembers_its_last_write_time,
        semantics::transitions_are_recorded_in_the_history,
        semantics::history_is_bounded,
        semantics::listing_shows_held_leases_or_all_keys,
        semantics::importing_a_lapsed_tenure_does_not_revive_it,
        semantics::an_unpin_that_ends_a_tenure_logs_the_lapse_at_the_unpin,
        semantics::claim_new_begins_a_tenure_or_nothing_even_for_the_holder,
        // Semantics 6: guards, in the backend's own caller transaction.
        guards::check_in_an_immediate_transaction,
        guards::an_epoch_token_fails_after_the_same_holder_reclaims,
        guards::a_token_fails_after_release_revoke_expiry_or_a_new_tenure,
        guards::a_failed_guard_writes_nothing_and_says_what_holds,
        guards::an_unfenced_token_follows_its_holder_across_tenures,
        guards::the_guarded_write_agrees_with_the_check,
        guards::a_passed_guard_holds_until_its_transaction_ends,
        guards::a_token_of_another_database_is_refused,
        guards::lease_operations_commit_or_roll_back_with_the_callers_transaction,
        // Bad input.
        bad_input::bad_names_are_refused_before_anything_is_written,
        bad_input::zero_and_overlong_durations_are_refused,
        // Semantics 8: waiting, and the leadership traits.
        leadership::the_claimer_trait_claims_leadership,
        leadership::blocking_returns_at_once_for_a_vacant_key,
        leadership::blocking_wakes_when_the_leader_releases,
        leadership::blocking_wakes_when_the_lease_expires_on_the_clock,
        leadership::a_change_of_holder_keeps_waiters_blocked,
        leadership::shutting_down_fails_waiters_with_stopped,
        // Semantics 9: trackers and tickets.
        tracker::a_tracker_on_a_vacant_lease_leads,
        tracker::a_waker_may_call_back_into_its_tracker,
        tracker::a_denied_tracker_is_a_minion,
        tracker::a_leader_renews_when_half_its_lease_is_left,
        tracker::a_claim_ticket_after_the_renewal_point_renews_first,
        tracker::losing_the_lease_on_renewal_makes_a_minion,
        tracker::a_renewal_kept_from_the_write_lock_is_reported_with_its_lease,
        tracker::a_minion_takes_over_when_the_leader_releases,
        tracker::a_minion_takes_over_when_the_lease_expires,
        tracker::a_release_seen_but_lost_to_another_claimant_blocks_again,
        tracker::a_pinned_lease_keeps_minions_waiting_until_unpinned,
        tracker::stopping_resolves_pending_tickets_false_and_releases,
        tracker::a_tracker_can_leave_its_lease_to_expire,
        tracker::shutting_the_engine_down_stops_every_tracker,
        tracker::bad_tracker_settings_are_refused,
        tracker::renewals_falling_due_together_share_a_transaction,
        tracker::while_leading_hands_over_the_token_and_signals_loss,
        tracker::a_ticket_can_be_awaited,
        tracker::many_trackers_in_one_process_are_ordinary,
        tracker::a_sole_leader_revoked_by_an_administrator_leads_again,
        tracker::a_leader_that_lost_to_another_takes_over_when_that_one_lapses,
        tracker::a_tracker_that_must_not_reclaim_stays_a_minion_after_a_revoke,
        tracker::a_timeout_too_long_to_express_waits_without_panicking,
        tracker::a_release_stuck_on_the_write_lock_does_not_delay_another_leaders_step_down,
        // The engine against a model of the contract.
        model::the_engine_agrees_with_the_model,
        model::two_engines_agree_with_the_model,
        model::regressions,
        // The history checker under nemeses (worker processes).
        nemesis::kills_of_the_leader,
        nemesis::pauses_past_the_lease,
        nemesis::clock_steps_forward_and_back,
        nemesis::a_long_held_write_lock,
        nemesis::pool_exhaustion,
        nemesis::pausing_the_leader_for_three_leases_on_a_key_of_our_own,
        nemesis::the_checker_has_teeth,
        nemesis::crash_consistency_under_200_kills,
        nemesis::the_checker_catches_a_write_after_the_lease_ran_out,
    ]
}

/// The entry point of the nemesis runs' worker processes (this binary run
/// again as `conformance worker --exact`); a no-op in the parent.
#[test]
fn worker() {
    leasehold::testing::serve_worker();
}
