-- leasehold schema 4: the clock offset, persisted with the time mark.
-- Engine time is the clock's reading plus an offset that only grows: when
-- an engine sees its clock behind the time it already used (a step back),
-- the offset grows by as much, so that time goes on from there at the
-- clock's rate, never back. An engine opened later starts with the larger
-- of this offset and what it takes for its clock to reach high_water_ms,
-- instead of standing still at the mark until its clock catches up (which,
-- after a clock far ahead wrote the mark, kept every lease from lapsing
-- for as long as that clock was ahead).
ALTER TABLE leasehold_clock ADD COLUMN offset_ms INTEGER NOT NULL DEFAULT 0;
