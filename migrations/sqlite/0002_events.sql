-- leasehold schema 2: the event history of each key.
-- One row per tenure transition or pin change (extensions are not logged).
-- Engines keep the newest rows only (a retention count set per engine).
CREATE TABLE leasehold_events (
    id        INTEGER PRIMARY KEY,   -- increases with commit order
    at_ms     INTEGER NOT NULL,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    kind      TEXT    NOT NULL
              CHECK (kind IN ('claimed', 'released', 'revoked', 'lapsed', 'pinned', 'unpinned')),
    -- The tenure concerned (for pins: the tenure current at the time, if any).
    holder    TEXT,
    epoch     INTEGER NOT NULL,
    -- Pins: the entity, and its reason / expiry.
    entity    TEXT,
    detail    TEXT
);
-- No index by key: every event would then write a second page. Reading
-- one key's history scans the retained rows (10,000 by default), which is
-- fine for an operator's command.
