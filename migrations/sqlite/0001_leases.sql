-- leasehold schema 1: leases, pins, and the persisted clock high-water mark.
-- Times are integer milliseconds since the Unix epoch (UTC).

-- One row per key ever claimed or pinned. Rows are never deleted, so that a
-- key's epoch counter survives releases, revokes and expiries.
CREATE TABLE leasehold_leases (
    namespace       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    -- Holder of the latest tenure; NULL once released or revoked. A tenure
    -- that ran out keeps its holder until the next write to the row, so
    -- readers compare expiry_ms and pinned_until_ms with the time.
    holder          TEXT,
    -- Fencing number of the latest tenure: 0 before the first, then +1 for
    -- each new tenure. Never decreases, never reused.
    epoch           INTEGER NOT NULL CHECK (epoch >= 0),
    started_ms      INTEGER NOT NULL,
    expiry_ms       INTEGER NOT NULL,
    -- Latest expiry among the key's live pins (9223372036854775807 for a pin
    -- without expiry; 0 when unpinned). Denormalised from leasehold_pins so
    -- that a guard reads one row.
    pinned_until_ms INTEGER NOT NULL DEFAULT 0,
    -- Engine time of the last write to this row; decisions about the row use
    -- max(now, updated_ms), so a clock stepping back cannot rejuvenate it.
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;

-- Pins: a multiset of entities per key, each removable only by its entity.
CREATE TABLE leasehold_pins (
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    entity     TEXT    NOT NULL,
    reason     TEXT    NOT NULL DEFAULT '',
    pinned_ms  INTEGER NOT NULL,
    expires_ms INTEGER,            -- NULL: until unpinned
    PRIMARY KEY (namespace, name, entity)
) WITHOUT ROWID;

-- The latest engine time persisted by any process (one row). Engines start
-- their clocks no earlier than this.
CREATE TABLE leasehold_clock (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    high_water_ms INTEGER NOT NULL
);
INSERT INTO leasehold_clock (id, high_water_ms) VALUES (1, 0);

-- Epochs must never be reused: refuse to delete lease rows, to lower an
-- epoch, or to replace a row by one with a lower epoch (INSERT OR REPLACE
-- deletes without firing delete triggers), whoever tries.
CREATE TRIGGER leasehold_leases_keep_rows
BEFORE DELETE ON leasehold_leases
BEGIN
    SELECT RAISE(ABORT, 'leasehold: lease rows are never deleted, so that epochs are never reused');
END;

CREATE TRIGGER leasehold_leases_epoch_never_decreases
BEFORE UPDATE OF epoch ON leasehold_leases
WHEN NEW.epoch < OLD.epoch
BEGIN
    SELECT RAISE(ABORT, 'leasehold: a lease epoch never decreases');
END;

CREATE TRIGGER leasehold_leases_no_replacement_downwards
BEFORE INSERT ON leasehold_leases
WHEN EXISTS (SELECT 1 FROM leasehold_leases
             WHERE namespace = NEW.namespace AND name = NEW.name AND epoch > NEW.epoch)
BEGIN
    SELECT RAISE(ABORT, 'leasehold: a lease epoch never decreases');
END;
