-- leasehold schema 1 (PostgreSQL): leases, pins, the history, and the rules
-- that keep epochs from ever being reused. Created in the schema the engine
-- was given (search_path is set to it while migrating). Times are integer
-- milliseconds since the Unix epoch (UTC), by the server's clock.

-- One row per key ever claimed or pinned. Rows are never deleted, so that a
-- key's epoch counter survives releases, revokes and expiries. Every
-- operation locks its key's row (FOR UPDATE) and every guard shares it (FOR
-- SHARE) until its transaction ends.
CREATE TABLE leasehold_leases (
    namespace       text   NOT NULL,
    name            text   NOT NULL,
    -- Holder of the latest tenure; NULL once released or revoked. A tenure
    -- that ran out keeps its holder until the next write to the row.
    holder          text,
    -- Fencing number of the latest tenure: 0 before the first, then +1 for
    -- each new tenure. Never decreases, never reused.
    epoch           bigint NOT NULL CHECK (epoch >= 0),
    started_ms      bigint NOT NULL,
    expiry_ms       bigint NOT NULL,
    -- Latest expiry among the key's live pins (9223372036854775807 for a pin
    -- without expiry; 0 when unpinned), so that a guard reads one row.
    pinned_until_ms bigint NOT NULL DEFAULT 0,
    -- Server time of the last write to this row; decisions about the row use
    -- greatest(now, updated_ms), so a server clock stepping back (or a
    -- failover to a host whose clock is behind) cannot rejuvenate it.
    updated_ms      bigint NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Pins: a multiset of entities per key, each removable only by its entity.
CREATE TABLE leasehold_pins (
    namespace  text   NOT NULL,
    name       text   NOT NULL,
    entity     text   NOT NULL,
    reason     text   NOT NULL DEFAULT '',
    pinned_ms  bigint NOT NULL,
    expires_ms bigint,            -- NULL: until unpinned
    PRIMARY KEY (namespace, name, entity)
);

-- The history: one row per tenure transition or pin change. Ids come from a
-- sequence and do not follow commit order; `tx` does, in the sense readers
-- need. It is the writing transaction's id, or the key's previous event's
-- if that is later (a transaction that took its id before it waited for the
-- key's row). Either way it is at least the writer's own id, so a reader
-- that takes the events below its snapshot's xmin (every transaction below
-- it has ended) and goes on from there misses none, and a key's events come
-- in the order their transactions committed.
CREATE TABLE leasehold_events (
    id        bigserial PRIMARY KEY,
    tx        xid8   NOT NULL DEFAULT pg_current_xact_id(),
    at_ms     bigint NOT NULL,
    namespace text   NOT NULL,
    name      text   NOT NULL,
    kind      text   NOT NULL
              CHECK (kind IN ('claimed', 'released', 'revoked', 'lapsed', 'pinned', 'unpinned')),
    holder    text,
    epoch     bigint NOT NULL,
    entity    text,
    detail    text
);
CREATE INDEX leasehold_events_by_tx ON leasehold_events (tx, id);
CREATE INDEX leasehold_events_by_key ON leasehold_events (namespace, name, id);

-- What trimming the history removed: readers behind it are told of a gap.
CREATE TABLE leasehold_trimmed (
    id      int  PRIMARY KEY CHECK (id = 1),
    up_to   xid8 NOT NULL
);
INSERT INTO leasehold_trimmed (id, up_to) VALUES (1, '0');

-- This schema's identity, made when it was created: a token carries it, and
-- its guard refuses to run against the tables of another database.
CREATE TABLE leasehold_instance (
    id   int  PRIMARY KEY CHECK (id = 1),
    uuid uuid NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO leasehold_instance (id) VALUES (1);

-- Epochs must never be reused: refuse to delete lease rows (TRUNCATE
-- included), or to lower an epoch, whoever tries.
CREATE FUNCTION leasehold_keep_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'leasehold: lease rows are never deleted, so that epochs are never reused';
END $$;

CREATE TRIGGER leasehold_leases_keep_rows
BEFORE DELETE ON leasehold_leases
FOR EACH ROW EXECUTE FUNCTION leasehold_keep_rows();

CREATE TRIGGER leasehold_leases_keep_rows_truncate
BEFORE TRUNCATE ON leasehold_leases
FOR EACH STATEMENT EXECUTE FUNCTION leasehold_keep_rows();

CREATE FUNCTION leasehold_epoch_never_decreases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'leasehold: a lease epoch never decreases';
END $$;

CREATE TRIGGER leasehold_leases_epoch_never_decreases
BEFORE UPDATE OF epoch ON leasehold_leases
FOR EACH ROW WHEN (NEW.epoch < OLD.epoch)
EXECUTE FUNCTION leasehold_epoch_never_decreases();

-- The server's time in milliseconds since the Unix epoch, at the moment of
-- the call (clock_timestamp(), not now(): now() is the transaction's start).
CREATE FUNCTION leasehold_now_us() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint
$$;
