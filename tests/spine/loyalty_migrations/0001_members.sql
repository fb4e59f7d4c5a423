-- A context's own table beside its event store (the test of a context's own migrations).
CREATE TABLE members (
    id     text PRIMARY KEY,
    points bigint NOT NULL DEFAULT 0
);
