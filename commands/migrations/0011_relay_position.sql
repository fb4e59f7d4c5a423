-- Where the stream stands with respect to the outbox: the stream sequence of the last event
-- whose outbox row was deleted (published), in the same statement as the delete, and which
-- stream that was (its creation time). A rebuild from the event store
-- (`chronicle replay --from postgres`) reads it in the same snapshot as the events: every
-- event not in that snapshot's outbox is in the stream at or below `stream_seq`.
CREATE TABLE IF NOT EXISTS relay_position (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    stream_seq     bigint      NOT NULL,
    stream_created timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
