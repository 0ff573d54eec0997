#!/usr/bin/env bash
# Measures what pg_notify costs a transaction: inside it (the notice queue's
# lock is held across the commit) or right after its commit (one more round
# trip), next to the same transaction without a notice. Durable server,
# pgbench, 1 and 8 clients, 5 alternating rounds of 4 s; prints tps per round.
# Needs PostgreSQL's server binaries (.ci/install-postgres); run as root.
set -e
B=/usr/lib/postgresql/15/bin
D=$(mktemp -d /tmp/pgnb.XXXX); chmod 755 $D; chown postgres: $D
runuser -u postgres -- $B/initdb -D $D/data -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- $B/pg_ctl -D $D/data -l $D/log -w -o "-c listen_addresses='' -c unix_socket_directories=$D -c fsync=on -c synchronous_commit=on -c max_connections=50" start >/dev/null
P="-h $D -U postgres postgres"
$B/psql $P -qc "CREATE TABLE t (id int primary key, v bigint); INSERT INTO t SELECT g, 0 FROM generate_series(1,64) g;"
cat > $D/inside.sql <<'S'
\set id random(1, 64)
BEGIN;
UPDATE t SET v = v + 1 WHERE id = :id;
SELECT pg_notify('leasehold_bench', 'app/key' || :id);
COMMIT;
S
cat > $D/after.sql <<'S'
\set id random(1, 64)
BEGIN;
UPDATE t SET v = v + 1 WHERE id = :id;
COMMIT;
SELECT pg_notify('leasehold_bench', 'app/key' || :id);
S
cat > $D/none.sql <<'S'
\set id random(1, 64)
BEGIN;
UPDATE t SET v = v + 1 WHERE id = :id;
COMMIT;
S
for c in 1 8; do
  for round in 1 2 3 4 5; do
    for s in none inside after; do
      tps=$($B/pgbench $P -n -c $c -j $c -T 4 -f $D/$s.sql 2>/dev/null | grep -oP 'tps = \K[0-9.]+' | head -1)
      echo "clients=$c round=$round $s $tps"
    done
  done
done
runuser -u postgres -- $B/pg_ctl -D $D/data -m immediate stop >/dev/null; rm -rf $D
