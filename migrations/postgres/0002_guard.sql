-- leasehold schema 2 (PostgreSQL): the guard statement, for any SQL client.
--
-- A client that is not this library (psql, a migration tool, a script)
-- guards a transaction by making this its first statement:
--
--   BEGIN;
--   SELECT leasehold_guard('ops', 'schema-migration', 'host-1', 7);
--   ... the transaction's writes ...
--   COMMIT;
--
-- It fails unless the holder holds the lease (in that epoch; any epoch
-- when it is NULL or left out) at the moment it runs, by the server's
-- clock. Passing, it holds the lease row FOR SHARE until the transaction
-- ends (after a turn at the key's advisory lock, as the library's guards
-- take one), so no tenure can end or begin meanwhile. Failing, it raises:
-- PostgreSQL then refuses every later statement of the transaction and
-- turns its COMMIT into a ROLLBACK. The error names the key, the holder
-- and what the database holds instead.
--
-- leasehold_holds(...) is the same check as a boolean, for one statement:
--   UPDATE t SET ... WHERE ... AND (SELECT leasehold_holds('ops', 'x', 'h', 7));
--
-- All three run with the search_path "<this schema>", pg_temp (set at the
-- end), so they find their tables whatever the caller's search_path, and a
-- caller's temporary table named like one of them (pg_temp is searched
-- first for tables unless the path names it) cannot stand in for it.

-- Why the holder does not hold the key now, or NULL when it does (then the
-- row is locked FOR SHARE until the transaction ends).
CREATE FUNCTION leasehold_guard_refusal(p_namespace text, p_name text, p_holder text,
                                        p_epoch bigint)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
    l leasehold_leases%ROWTYPE;
    now_ms bigint;
BEGIN
    -- The key's turn, shared, before the row (as the library's guards).
    PERFORM pg_advisory_xact_lock_shared(
        hashtextextended(p_namespace || '/' || p_name, 1818782068));
    SELECT * INTO l FROM leasehold_leases
    WHERE namespace = p_namespace AND name = p_name
    FOR SHARE;
    IF NOT FOUND THEN
        RETURN 'it was never claimed';
    END IF;
    -- Read after the lock: the time a tenure is judged at is after any
    -- change that could have ended it.
    now_ms := leasehold_now_us() / 1000;
    IF l.holder IS NULL THEN
        RETURN format('it is vacant (epoch %s was released or revoked)', l.epoch);
    END IF;
    IF greatest(l.expiry_ms, l.pinned_until_ms) <= greatest(now_ms, l.updated_ms) THEN
        RETURN format('epoch %s of "%s" expired %s ms ago', l.epoch, l.holder,
                      greatest(now_ms, l.updated_ms) - greatest(l.expiry_ms, l.pinned_until_ms));
    END IF;
    IF p_holder IS NULL OR l.holder <> p_holder OR l.epoch <> coalesce(p_epoch, l.epoch) THEN
        RETURN format('it is held by "%s" in epoch %s', l.holder, l.epoch);
    END IF;
    RETURN NULL;
END $$;

-- The guard statement: raises unless the holder holds the key.
CREATE FUNCTION leasehold_guard(p_namespace text, p_name text, p_holder text,
                                p_epoch bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
    refusal text := leasehold_guard_refusal(p_namespace, p_name, p_holder, p_epoch);
BEGIN
    IF refusal IS NOT NULL THEN
        RAISE EXCEPTION 'leasehold guard: %/% is not held by "%"%: %',
            coalesce(p_namespace, '(null)'), coalesce(p_name, '(null)'),
            coalesce(p_holder, '(null)'),
            CASE WHEN p_epoch IS NULL THEN '' ELSE format(' in epoch %s', p_epoch) END,
            refusal
        USING HINT = 'roll back and stop: this transaction must not commit';
    END IF;
END $$;

-- The same check as a boolean, for a single statement's WHERE.
CREATE FUNCTION leasehold_holds(p_namespace text, p_name text, p_holder text,
                                p_epoch bigint DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE SET search_path FROM CURRENT AS $$
    SELECT leasehold_guard_refusal(p_namespace, p_name, p_holder, p_epoch) IS NULL
$$;

-- pg_temp named last: otherwise it is searched first for tables.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION leasehold_guard_refusal(text, text, text, bigint) '
                   'SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION leasehold_guard(text, text, text, bigint) '
                   'SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION leasehold_holds(text, text, text, bigint) '
                   'SET search_path = %I, pg_temp', current_schema());
END $$;
