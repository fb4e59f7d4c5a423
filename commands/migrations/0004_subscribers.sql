-- Where every reader of the log stands, and the events it parked (DESIGN.md invariants 4
-- and 8). The subscriber runtime in `chronicle-bus` creates the same tables when they are
-- missing; here they exist before any process reads them.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name text PRIMARY KEY,
    checkpoint bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS parked_events (
    subscriber text NOT NULL,
    stream_seq bigint NOT NULL,
    subject text NOT NULL,
    event_type text NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber, stream_seq)
);
