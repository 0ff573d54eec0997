//! The performance report: every figure of the project's targets, measured
//! next to its baseline in the same run, as one table.
//!
//! `cargo bench --bench report` (about a minute), or with
//! `LEASEHOLD_BENCH_SHORT=1` for the quick version CI runs so that the
//! report cannot rot. Whether targets hold is printed, never enforced: the
//! machine is shared and noisy.

#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::procs::{
    Helper, handover_after_kill, handover_after_release, handover_after_release_both, idle_watch,
    percentile, run_case, serve_role, short, ten_thousand_trackers,
};
use common::{ClaimCase, Figure, Spread};
use leasehold::{Engine, Synchronous};

struct Row {
    figure: String,
    leasehold: String,
    baseline: String,
    ratio: String,
    target: String,
    holds: Option<bool>,
}

/// `median (min–max)` of a spread, each value formatted by `f`.
fn spread(s: Spread, f: impl Fn(f64) -> String) -> String {
    format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
}

fn us(s: f64) -> String {
    format!("{:.2}", s * 1e6)
}

fn per_s(s: f64) -> String {
    format!("{s:.0}")
}

fn x(r: f64) -> String {
    format!("{r:.2}")
}

/// Time ratio (leasehold / baseline), for "at most" targets.
fn slower(name: &str, f: &Figure, max: f64, baseline: &str) -> Row {
    let r = Spread::of(&f.ratio);
    Row {
        figure: name.into(),
        leasehold: format!("{} µs", spread(Spread::of(&f.leasehold), us)),
        baseline: format!("{} µs, {baseline}", spread(Spread::of(&f.baseline), us)),
        ratio: format!("{}×", spread(r, x)),
        target: format!("≤ {max:.2}×"),
        holds: Some(r.median <= max),
    }
}

/// Throughput ratio (baseline time / leasehold time), for "at least"
/// targets; `per` calls of the workload count as one call.
fn throughput(name: &str, f: &Figure, per: f64, min: f64, baseline: &str) -> Row {
    let rate = |v: &[f64]| Spread::of(v).map(|s| per / s);
    let r = Spread::of(&f.ratio).map(|r| 1.0 / r);
    Row {
        figure: name.into(),
        leasehold: format!("{} /s", spread(rate(&f.leasehold), per_s)),
        baseline: format!("{} /s, {baseline}", spread(rate(&f.baseline), per_s)),
        ratio: format!("{}×", spread(r, x)),
        target: format!("≥ {min:.2}×"),
        holds: Some(r.median >= min),
    }
}

/// The report's sections, in order.
const SECTIONS: [&str; 7] = [
    "writes",
    "claims",
    "reads",
    "handover",
    "watch",
    "contention",
    "postgres",
];

fn main() {
    if serve_role() || std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = short();
    let (rounds, budget) = if quick {
        (7, Duration::from_millis(400))
    } else {
        (15, Duration::from_secs(3))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let mut rows = Vec::new();
    let m = |mut pair: common::Pair| common::measure(&mut pair, rounds, budget);
    // `cargo bench --bench report -- claims reads` measures those sections
    // only (cargo adds `--bench`, hence the dashes are skipped).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for s in &only {
        assert!(
            SECTIONS.contains(&s.as_str()),
            "unknown section {s:?}; sections: {SECTIONS:?}"
        );
    }
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    if want("writes") {
        eprintln!("measuring guarded writes…");
        let f = m(common::guarded_write_txn(p, Synchronous::Normal, "NORMAL"));
        rows.push(slower("guarded write: Txn builder", &f, 1.15, "bare txn"));
        let f = m(common::guarded_write_check_in(
            p,
            Synchronous::Normal,
            "NORMAL",
        ));
        rows.push(slower("guarded write: check_in", &f, 1.15, "bare txn"));
        let f = m(common::guarded_write_fragment(p));
        rows.push(slower("guarded write: SQL fragment", &f, 1.15, "bare txn"));
        // fsync times wander more than CPU times: twice the rounds, each as
        // long as the others'.
        let f = common::measure(
            &mut common::guarded_write_check_in(p, Synchronous::Full, "FULL"),
            rounds * 2 + 1,
            budget * 2,
        );
        rows.push(slower(
            "guarded write (check_in), synchronous=FULL",
            &f,
            1.03,
            "bare txn, FULL",
        ));
    }
    if want("claims") {
        eprintln!("measuring claims…");
        // The target (decided in issue 12): against the same pair of
        // transactions writing the same rows, the lease row and a history
        // row each.
        let f = m(common::claim(p, ClaimCase::NewTenureLogged));
        rows.push(throughput(
            "claim new tenure + release",
            &f,
            1.0,
            0.90,
            "2 raw upserts + log rows",
        ));
        // For information: against bare upserts, which write no history.
        let f = m(common::claim(p, ClaimCase::NewTenure));
        let mut info = throughput(
            "claim new tenure + release (info)",
            &f,
            1.0,
            0.90,
            "2 raw upserts, no history",
        );
        info.target = "(info)".into();
        info.holds = None;
        rows.push(info);
        let f = m(common::claim(p, ClaimCase::Extend));
        rows.push(throughput(
            "re-claim (extends), one per txn",
            &f,
            1.0,
            0.90,
            "raw upsert",
        ));
        let f = m(common::extend_tenure(p));
        rows.push(throughput(
            "extend a held tenure, one per txn",
            &f,
            1.0,
            0.90,
            "raw upsert",
        ));
        let f = m(common::batched_renewals(p));
        rows.push(throughput(
            "100 renewals per txn (per key)",
            &f,
            100.0,
            0.70,
            "raw batched upsert",
        ));
    }
    if want("reads") {
        eprintln!("measuring reads…");
        let f = m(common::token_check(p));
        rows.push(throughput(
            "standalone token check",
            &f,
            1.0,
            0.60,
            "raw prepared SELECT",
        ));
        let big = if quick { 20_000 } else { 100_000 };
        let f = m(common::reads(p, big, false));
        rows.push(slower(
            &format!("get, {big} leases vs 100"),
            &f,
            1.2,
            "100 leases",
        ));
        let f = m(common::reads(p, big, true));
        rows.push(slower(
            &format!("list 100, {big} leases vs 100"),
            &f,
            1.2,
            "100 leases",
        ));
    }
    if want("handover") {
        eprintln!("measuring hand-overs…");
        let db = p.join("handover.db");
        let engine = Engine::open(&db).expect("engine");
        let mut successor = Helper::spawn("successor", &db);
        let n = if quick { 40 } else { 300 };
        let release: Vec<f64> = (0..n)
            .map(|_| handover_after_release(&engine, &mut successor).as_secs_f64() * 1e3)
            .collect();
        rows.push(latency(
            "hand-over after release",
            release,
            "etcd 1.5 / 2.6 ms",
            (1.0, 3.0),
        ));
        // With synchronous=FULL the releasing commit reaches the WAL an
        // fsync before it shows in the WAL index, so the other process's
        // file-system event comes early: it must look again.
        let full_db = p.join("handover-full.db");
        let full = Engine::builder(&full_db)
            .synchronous(leasehold::Synchronous::Full)
            .build()
            .expect("engine");
        let mut full_successor = Helper::spawn("successor", &full_db);
        let n = if quick { 20 } else { 100 };
        let release: Vec<f64> = (0..n)
            .map(|_| {
                handover_after_release_both(&full, &mut full_successor)
                    .1
                    .as_secs_f64()
                    * 1e3
            })
            .collect();
        rows.push(latency(
            "hand-over after release (FULL), from its commit",
            release,
            "etcd 1.5 / 2.6 ms",
            (1.0, 3.0),
        ));
        drop(full_successor);
        let n = if quick { 6 } else { 40 };
        let kill: Vec<f64> = (0..n)
            .map(|_| handover_after_kill("doomed", &db, &mut successor).as_secs_f64() * 1e3)
            .collect();
        rows.push(latency(
            "hand-over after SIGKILL, from expiry",
            kill,
            "etcd 280 / 500 ms",
            (10.0, 30.0),
        ));
    }
    if want("watch") {
        eprintln!("measuring idle watching…");
        let idle = idle_watch();
        rows.push(Row {
            figure: "watcher CPU, idle, with waiters".into(),
            leasehold: format!("{idle:.3}% of a core"),
            baseline: String::new(),
            ratio: String::new(),
            target: "≤ 1%".into(),
            holds: Some(idle <= 1.0),
        });
        let (trackers, cpu, txns, renewals) = ten_thousand_trackers();
        rows.push(Row {
            figure: format!("renewal round of {trackers} trackers"),
            leasehold: format!("{:.1} ms CPU, {txns} txns", cpu.as_secs_f64() * 1e3),
            baseline: format!("{renewals} renewals"),
            ratio: String::new(),
            target: "batched".into(),
            holds: None,
        });
    }
    if want("contention") {
        contention(p, &mut rows);
    }
    if want("postgres") {
        postgres(quick, &mut rows);
    }
    print(quick, &rows);
}

/// p50 / p99 of latency samples in ms, with the fastest and slowest sample.
fn latency(name: &str, mut ms: Vec<f64>, baseline: &str, (p50_max, p99_max): (f64, f64)) -> Row {
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
    Row {
        figure: format!("{name}, p50 / p99 (n={})", ms.len()),
        leasehold: format!(
            "{p50:.3} / {p99:.3} ms (min {:.3}, max {:.3})",
            ms[0],
            ms[ms.len() - 1]
        ),
        baseline: baseline.into(),
        ratio: String::new(),
        target: format!("≤ {p50_max} / {p99_max} ms"),
        holds: Some(p50 <= p50_max && p99 <= p99_max),
    }
}

/// Eight processes writing guarded transactions to one file: SQLite's busy
/// handler, leasehold's fair one flat out, and the fair one paced.
fn contention(p: &std::path::Path, rows: &mut Vec<Row>) {
    eprintln!("measuring contention (8 processes)…");
    let default = run_case(p, "default", None);
    let fair = run_case(p, "fair", None);
    let paced = run_case(p, "fair", Some(2000));
    rows.push(Row {
        figure: "8 writers flat out: wait p99.9 / max".into(),
        leasehold: format!(
            "{:.2} / {:.2} ms",
            f64::from(fair.p999) / 1e3,
            f64::from(fair.max) / 1e3
        ),
        baseline: format!(
            "{:.2} / {:.2} ms (SQLite's handler)",
            f64::from(default.p999) / 1e3,
            f64::from(default.max) / 1e3
        ),
        ratio: String::new(),
        target: "≤ 10 / 50 ms".into(),
        holds: Some(fair.p999 <= 10_000 && fair.max <= 50_000),
    });
    rows.push(Row {
        figure: "8 writers flat out: least share".into(),
        leasehold: format!("{:.2}", fair.min_share),
        baseline: format!("{:.2} (SQLite's handler)", default.min_share),
        ratio: String::new(),
        target: "≥ 0.80".into(),
        holds: Some(fair.min_share >= 0.8),
    });
    rows.push(Row {
        figure: "8 writers flat out: throughput".into(),
        leasehold: format!("{:.0} tx/s", fair.throughput),
        baseline: format!("{:.0} tx/s (SQLite's handler)", default.throughput),
        ratio: format!("{:.2}×", fair.throughput / default.throughput),
        target: "≥ 0.70×".into(),
        holds: Some(fair.throughput / default.throughput >= 0.7),
    });
    rows.push(Row {
        figure: "8 writers paced 2,000/s: served".into(),
        leasehold: format!(
            "{:.3} (latest {:.1} ms)",
            paced.served, paced.lateness_max_ms
        ),
        baseline: String::new(),
        ratio: String::new(),
        target: "all".into(),
        holds: Some(paced.served >= 0.999),
    });
    let wal_max = fair.wal_max_kib.max(paced.wal_max_kib);
    rows.push(Row {
        figure: "renewals missed under load / WAL max".into(),
        leasehold: format!(
            "{} / {:.1} MiB",
            fair.renewal_lost + paced.renewal_lost,
            wal_max as f64 / 1024.0
        ),
        baseline: format!(
            "{} / {:.1} MiB (SQLite's handler)",
            default.renewal_lost,
            default.wal_max_kib as f64 / 1024.0
        ),
        ratio: String::new(),
        target: "0 / < 64 MiB".into(),
        holds: Some(fair.renewal_lost + paced.renewal_lost == 0 && wal_max < 64 * 1024),
    });
    rows.push(Row {
        figure: "guarded write vs etcd / PostgreSQL, FULL".into(),
        leasehold: String::new(),
        baseline: "run benches/peers/run.sh (starts both servers)".into(),
        ratio: String::new(),
        target: "≥ 3×".into(),
        holds: None,
    });
}

/// Time ratio over `clients` clients (per call: wall time / calls).
fn clients_row(name: &str, c: &common::pg::Clients, max: f64, baseline: &str) -> Row {
    let f = Figure {
        leasehold: c.leasehold.clone(),
        baseline: c.baseline.clone(),
        ratio: c.ratio.clone(),
    };
    slower(name, &f, max, baseline)
}

/// The PostgreSQL section: a durable server of its own (fsync and
/// synchronous commit on), over its Unix socket.
fn postgres(quick: bool, rows: &mut Vec<Row>) {
    use common::pg;
    use leasehold::postgres::PgEngine;
    eprintln!("measuring PostgreSQL (a durable server of the report's own)…");
    let server = match pg::server() {
        Ok(server) => server,
        Err(e) => {
            rows.push(Row {
                figure: "PostgreSQL".into(),
                leasehold: format!("skipped: {e}"),
                baseline: "run .ci/install-postgres".into(),
                ratio: String::new(),
                target: String::new(),
                holds: None,
            });
            return;
        }
    };
    let db = server.create_database().expect("database");
    let url = db.url().to_owned();
    pg::items(&url);
    let engine = PgEngine::connect(&url).expect("engine");
    let key = leasehold::Key::new("bench", "writer").expect("key");
    let token = engine
        .claim(&key, "writer", Duration::from_secs(24 * 3600))
        .expect("claim")
        .token();
    let (rounds, round) = pg::shape();
    for clients in [1, 16] {
        let c = pg::measure_clients(
            clients,
            rounds,
            round,
            &|| pg::fragment_job(&url, &token),
            &|| pg::bare_job(&url),
        );
        rows.push(clients_row(
            &format!("pg: guarded write, SQL fragment, {clients} client(s)"),
            &c,
            1.10,
            "bare txn, same UPDATE",
        ));
        let c = pg::measure_clients(
            clients,
            rounds,
            round,
            &|| pg::check_in_job(&url, &token),
            &|| pg::bare_job(&url),
        );
        rows.push(clients_row(
            &format!("pg: guarded write, check_in, {clients} client(s)"),
            &c,
            1.30,
            "bare txn, same UPDATE",
        ));
        let c = pg::measure_clients(
            clients,
            rounds,
            round,
            &|| pg::prepared_fragment_job(&url, &token),
            &|| pg::prepared_bare_job(&url),
        );
        rows.push(clients_row(
            &format!("pg: guarded write, SQL fragment, prepared, {clients} client(s)"),
            &c,
            1.10,
            "bare txn, same UPDATE, prepared",
        ));
    }
    let c = pg::measure_clients(1, rounds, round, &|| pg::claim_job(&engine), &|| {
        pg::raw_claim_job(&url)
    });
    let f = Figure {
        leasehold: c.leasehold,
        baseline: c.baseline,
        ratio: c.ratio,
    };
    rows.push(throughput(
        "pg: claim new tenure + release, 1 client",
        &f,
        1.0,
        0.85,
        "same rows by hand, notices both",
    ));
    // Hand-over across processes.
    let mut successor = Helper::spawn("pg-successor", &url);
    let n = if quick { 30 } else { 200 };
    let release: Vec<f64> = (0..n)
        .map(|_| {
            handover_after_release_both(&engine, &mut successor)
                .1
                .as_secs_f64()
                * 1e3
        })
        .collect();
    rows.push(latency(
        "pg: hand-over after release, from its commit",
        release,
        "etcd 1.5 / 2.6 ms",
        (1.0, 5.0),
    ));
    let n = if quick { 6 } else { 40 };
    let kill: Vec<f64> = (0..n)
        .map(|_| handover_after_kill("pg-doomed", &url, &mut successor).as_secs_f64() * 1e3)
        .collect();
    rows.push(latency(
        "pg: hand-over after SIGKILL, from expiry",
        kill,
        "etcd 280 / 500 ms",
        (10.0, 30.0),
    ));
    drop(successor);
    let window = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    };
    let (losses, renewals, writes) =
        pg::renewals_under_load(&url, &engine, 16, Duration::from_millis(250), window);
    rows.push(Row {
        figure: "pg: renewals while 16 clients write guarded".into(),
        leasehold: format!("{losses} lost, {renewals} renewals, {writes} writes"),
        baseline: String::new(),
        ratio: String::new(),
        target: "none late".into(),
        holds: Some(losses == 0 && renewals > 0),
    });
}

fn print(quick: bool, rows: &[Row]) {
    let headers = [
        "figure",
        "leasehold",
        "baseline",
        "ratio",
        "target",
        "holds",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.leasehold.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
                r.target.clone(),
                match r.holds {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .chain([headers[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: [&str; 6]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    println!(
        "\nleasehold performance report ({} mode; medians of interleaved rounds; WAL, synchronous=NORMAL unless named)\n",
        if quick { "short" } else { "full" }
    );
    line(headers);
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in &cells {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
    }
    if rows
        .iter()
        .any(|r| r.figure.starts_with("claim new tenure"))
    {
        println!(
            "\nA claim that starts a tenure, and a release, each also write the key's history \
             (the event table `leasehold history` reads): a second WAL page per transaction, \
             where a raw upsert writes one. Its target is judged against a baseline that \
             writes the same two rows; the row marked (info) compares with bare upserts."
        );
    }
    if rows
        .iter()
        .any(|r| r.figure.starts_with("pg: guarded write"))
    {
        println!(
            "\nOn PostgreSQL the guard reads and locks a second row (the lease's, FOR SHARE, \
             which writes a WAL record), after a turn at the key's advisory lock. Rows without \
             \"prepared\" send both sides' statements as text (the client parses and plans \
             each every time, and the guard's subqueries cost more to plan than the bare \
             UPDATE); \"prepared\" rows prepare both once. Measured with pgbench on this \
             machine (prepared, durable), locking any second row FOR SHARE alone costs \
             about 1.15x: the floor of a guard that holds the lease row."
        );
    }
}
