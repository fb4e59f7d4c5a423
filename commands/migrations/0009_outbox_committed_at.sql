-- When each outbox row was committed (its transaction's start), so the relay can report
-- how long events wait before they are published (chronicle_relay_publish_lag_seconds).
-- A constant default: adding it rewrites nothing.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS committed_at timestamptz NOT NULL DEFAULT now();
