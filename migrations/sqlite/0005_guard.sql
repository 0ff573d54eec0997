-- leasehold schema 5: the guard statement, for any SQL client.
--
-- A client that is not this library (sqlite3, a migration tool, a script)
-- guards a transaction by making this its first statement:
--
--   BEGIN IMMEDIATE;
--   INSERT INTO leasehold_guard (namespace, name, holder, epoch)
--       VALUES ('ops', 'schema-migration', 'host-1', 7);
--   ... the transaction's writes ...
--   COMMIT;
--
-- The insert changes nothing; it fails unless the holder holds the lease
-- (in that epoch; any epoch when epoch is NULL) at the moment it runs. It is
-- a write, so it takes the database's write lock (in a deferred
-- transaction too, or fails with SQLITE_BUSY), and nothing can end or
-- begin a tenure until the transaction ends. The error text names the key,
-- the holder and what the database holds instead. SQLite's RAISE() takes
-- only a literal before 3.48, so the text is carried by the one error of
-- every SQLite since 3.38 that quotes a value: a JSON path that is not one.
-- A failed statement leaves the transaction open: the client must roll
-- back and stop (sqlite3 -bail), never carry on to COMMIT.
--
-- Time is read in SQL: the clock (julianday, which every SQLite has; not
-- unixepoch('subsec'), which needs 3.42) plus the engines' persisted offset,
-- never behind their persisted mark: an upper bound of engine time, as far
-- as the database knows, so the guard never outlives a tenure an engine
-- would call ended.

-- Engine time as SQL sees it, in milliseconds since the Unix epoch.
CREATE VIEW leasehold_now (now_ms) AS
SELECT max(CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + offset_ms,
           high_water_ms)
FROM leasehold_clock WHERE id = 1;

-- Inserting into it is the guard; it never holds a row.
CREATE VIEW leasehold_guard (namespace, name, holder, epoch) AS
SELECT NULL, NULL, NULL, NULL WHERE 0;

CREATE TRIGGER leasehold_guard_check
INSTEAD OF INSERT ON leasehold_guard
BEGIN
    SELECT json_extract('{}',
        'leasehold guard: ' || coalesce(NEW.namespace, '(null)') || '/'
        || coalesce(NEW.name, '(null)') || ' is not held by "'
        || coalesce(NEW.holder, '(null)') || '"'
        || CASE WHEN NEW.epoch IS NULL THEN '' ELSE ' in epoch ' || NEW.epoch END
        || ': ' ||
        CASE
            WHEN l.namespace IS NULL THEN 'it was never claimed'
            WHEN l.holder IS NULL THEN 'it is vacant (epoch ' || l.epoch || ' was released or revoked)'
            WHEN max(l.expiry_ms, l.pinned_until_ms) <= max(t.now_ms, l.updated_ms)
                THEN 'epoch ' || l.epoch || ' of "' || l.holder || '" expired '
                     || (max(t.now_ms, l.updated_ms) - max(l.expiry_ms, l.pinned_until_ms))
                     || ' ms ago'
            ELSE 'it is held by "' || l.holder || '" in epoch ' || l.epoch
        END)
    FROM (SELECT (SELECT now_ms FROM leasehold_now) AS now_ms) AS t
    LEFT JOIN leasehold_leases AS l
        ON l.namespace = NEW.namespace AND l.name = NEW.name
    WHERE NOT coalesce(
        NEW.holder IS NOT NULL
        AND l.holder = NEW.holder
        AND (NEW.epoch IS NULL OR l.epoch = NEW.epoch)
        AND max(l.expiry_ms, l.pinned_until_ms) > max(t.now_ms, l.updated_ms),
        0);
END;
