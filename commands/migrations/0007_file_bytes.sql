-- Stored file bytes and who last claimed them (issue 12). The gateway claims bytes, by their
-- SHA-256, before it names them or points a new file at bytes already stored; the files
-- janitor removes bytes no live file refers to only when nobody claimed them for the grace
-- period, holding the row while it removes them, so a claim waits for a removal to finish
-- and then finds the bytes gone (and stores them anew) instead of pointing at nothing.
CREATE TABLE IF NOT EXISTS file_bytes (
    sha256     text PRIMARY KEY,
    claimed_at timestamptz NOT NULL,
    removed_at timestamptz
);
