-- Payment deadlines of the order saga: one row per placed order that is not yet paid,
-- rejected or cancelled. Written when the saga handles OrderPlaced (before it acks it), so a
-- deadline survives any restart; the saga cancels orders whose deadline has passed.
CREATE TABLE saga_order_deadlines
(
    order_id       text PRIMARY KEY,
    due_at         timestamptz NOT NULL,
    -- What the cancellation will carry: the order's correlation id and, as its cause, the
    -- OrderPlaced event.
    correlation_id uuid        NOT NULL,
    causation_id   uuid        NOT NULL
);

CREATE INDEX saga_order_deadlines_due ON saga_order_deadlines (due_at);
