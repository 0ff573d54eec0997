#!/usr/bin/env bash
# Guarded writes side by side at 1, 4 and 16 clients, all durable:
# leasehold on SQLite (synchronous=FULL) and on PostgreSQL 15, raw
# PostgreSQL, and etcd 3.4 through its gRPC client. Starts both servers on
# loopback in a temp dir (installing them, and protoc for etcd-client's
# build, from Debian if missing and we are root), runs the comparison,
# stops them. Not part of CI: it needs the servers. See README.md here.
#
#   benches/peers/run.sh
#   PEERS_CLIENTS=1,4 PEERS_ROUNDS=5 PEERS_ROUND_MS=1000 benches/peers/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null \
    || [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            etcd-server postgresql-15 protobuf-compiler
    else
        echo "needs etcd (Debian: etcd-server), PostgreSQL 15 (postgresql-15)" \
            "and protoc (protobuf-compiler)" >&2
        exit 2
    fi
fi

# Build first, so that the servers are not up (nor the build competing)
# while it compiles.
cargo build --release --quiet --manifest-path "$here/Cargo.toml"

tmp="$(mktemp -d)"
chmod 755 "$tmp"
pg_bin=/usr/lib/postgresql/15/bin
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
cleanup() {
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg" -m fast stop >/dev/null 2>&1 || true
    [ -n "${etcd_pid:-}" ] && kill "$etcd_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# Ports nothing listens on yet (other servers may share the machine), nor
# taken by an earlier call (it runs in a subshell: the caller records them).
free_port() {
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || [[ " ${taken[*]:-} " == *" $p "* ]]; do
        p=$((p + 1))
    done
    echo "$p"
}
taken=()
etcd_port=$(free_port 23790); taken+=("$etcd_port")
peer_port=$(free_port 23800); taken+=("$peer_port")
pg_port=$(free_port 54329)

# etcd: single node, loopback, default durability (fsync of its WAL per commit).
etcd --name peers --data-dir "$tmp/etcd" \
    --listen-client-urls http://127.0.0.1:$etcd_port --advertise-client-urls http://127.0.0.1:$etcd_port \
    --listen-peer-urls http://127.0.0.1:$peer_port --initial-advertise-peer-urls http://127.0.0.1:$peer_port \
    --initial-cluster peers=http://127.0.0.1:$peer_port >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!

# PostgreSQL: a fresh cluster, fsync and synchronous commit on (the defaults).
mkdir "$tmp/pg"
[ "$(id -u)" = 0 ] && chown postgres "$tmp/pg"
"${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/pg" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg/log" -w \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp/pg -c fsync=on -c synchronous_commit=on -c track_wal_io_timing=on" \
    start >/dev/null || { cat "$tmp/pg/log" >&2; exit 1; }

for _ in $(seq 50); do
    curl -fs http://127.0.0.1:$etcd_port/health >/dev/null 2>&1 && break
    sleep 0.1
done

echo "$(etcd --version | head -1); $("$pg_bin/postgres" --version);" \
    "etcd-client $(grep -A1 '^name = "etcd-client"' "$here/Cargo.lock" | sed -n 's/version = "\(.*\)"/\1/p')"
echo "$(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" \
    "(the machine may be shared: figures are medians of alternating rounds)"
PEERS_PG="host=127.0.0.1 port=$pg_port user=postgres dbname=postgres" \
PEERS_ETCD="127.0.0.1:$etcd_port" \
    cargo run --release --quiet --manifest-path "$here/Cargo.toml"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# What each server's disk flushes cost over the whole run (all client
# counts): how many, and their mean time.
curl -fs "http://127.0.0.1:$etcd_port/metrics" | awk '
    /^etcd_disk_wal_fsync_duration_seconds_sum/ { s = $2 }
    /^etcd_disk_wal_fsync_duration_seconds_count/ { n = $2 }
    END { if (n) printf "etcd WAL fsyncs: %d, mean %.2f ms\n", n, s / n * 1000 }'
"${as_pg[@]}" "$pg_bin/psql" -h "$tmp/pg" -p "$pg_port" -U postgres -d postgres -Atc \
    "SELECT format('PostgreSQL WAL syncs: %s, mean %s ms', wal_sync,
                   round((wal_sync_time / greatest(wal_sync, 1))::numeric, 2))
     FROM pg_stat_wal" || true
