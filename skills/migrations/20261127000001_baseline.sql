-- The hotel skills' schema `hotel` (the 0.x migrations squashed; see docs/operators.md).

-- Room holds: the hotel skills' own guarantee that one room is never booked twice for
-- overlapping nights, also under concurrent calls. The CRM's availability query alone is
-- check-then-act; this exclusion constraint makes the second of two racing bookings fail.
-- btree_gist gives `=` on text a GiST operator class; it is installed where extensions
-- usually live (`public`), not in the schema being migrated.
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public;

CREATE SCHEMA IF NOT EXISTS hotel;

CREATE TABLE hotel.room_holds (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The step idempotency key that took the hold: a re-run step finds its own hold.
    hold_key    text NOT NULL UNIQUE CHECK (length(hold_key) BETWEEN 1 AND 300),
    -- The booking the hold belongs to (its CRM external id).
    booking_ref text NOT NULL CHECK (length(booking_ref) BETWEEN 1 AND 300),
    room_number text NOT NULL CHECK (room_number ~ '^[A-Za-z0-9]{1,8}$'),
    nights      daterange NOT NULL
                CHECK (NOT isempty(nights) AND lower_inc(nights) AND NOT upper_inc(nights)
                       AND NOT lower_inf(nights) AND NOT upper_inf(nights)),
    saga_id     uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    CONSTRAINT room_holds_no_overlap
        EXCLUDE USING gist (room_number WITH =, nights WITH &&) WHERE (released_at IS NULL)
);

CREATE INDEX room_holds_booking ON hotel.room_holds (booking_ref) WHERE released_at IS NULL;
