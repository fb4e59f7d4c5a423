-- The scheduler processes (issue 13): each one writes its row when it starts and its
-- `seen_at` every heartbeat. The live rows decide which process looks after which bucket of
-- jobs (no leader: each process computes the same answer from the same rows); all rows,
-- live or not, say when some scheduler was running, which tells a due time that passed
-- while no scheduler ran (the missed-run policy applies) from one that is merely late.
CREATE TABLE IF NOT EXISTS scheduler_processes (
    id         uuid PRIMARY KEY,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL,
    stopped    boolean     NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS scheduler_processes_seen ON scheduler_processes (seen_at);
