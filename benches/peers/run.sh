#!/usr/bin/env bash
# Guarded writes side by side: leasehold vs PostgreSQL 15 vs etcd 3.4, one
# client each, durable, on this machine. Starts both servers on loopback in
# a temp dir (installing them from Debian if missing and we are root), runs
# the comparison, stops them. Not part of CI: it needs the servers.
#
#   benches/peers/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v etcd >/dev/null || [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server postgresql-15
    else
        echo "needs etcd (Debian: etcd-server) and PostgreSQL 15 (postgresql-15)" >&2
        exit 2
    fi
fi

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

# etcd: single node, loopback, default durability (fsync of its WAL per commit).
etcd --name peers --data-dir "$tmp/etcd" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster peers=http://127.0.0.1:23800 >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!

# PostgreSQL: a fresh cluster, fsync and synchronous commit on (the defaults).
mkdir "$tmp/pg"
[ "$(id -u)" = 0 ] && chown postgres "$tmp/pg"
"${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/pg" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg/log" -w \
    -o "-p 54329 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp/pg -c fsync=on -c synchronous_commit=on" \
    start >/dev/null || { cat "$tmp/pg/log" >&2; exit 1; }

for _ in $(seq 50); do
    curl -fs http://127.0.0.1:23790/health >/dev/null 2>&1 && break
    sleep 0.1
done

PEERS_PG="host=127.0.0.1 port=54329 user=postgres dbname=postgres" \
PEERS_ETCD="127.0.0.1:23790" \
    cargo run --release --quiet --manifest-path "$here/Cargo.toml"
