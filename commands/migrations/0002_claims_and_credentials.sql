-- Unique claims: values that at most one aggregate may hold (a username, a coupon code),
-- inserted in the same transaction as the events that take them. A taken claim fails the
-- command, as an optimistic-concurrency conflict does.
CREATE TABLE unique_claims
(
    namespace      text        NOT NULL,
    value          text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, value)
);

-- Password hashes (argon2id, PHC strings). Never in an event: DESIGN.md invariant 6.
CREATE TABLE credentials
(
    user_id       text PRIMARY KEY,
    password_hash text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
