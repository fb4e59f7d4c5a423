-- The event store. `events` and `snapshots` keep postgres-es's exact layout (its
-- db/init.sql), so the library's own repository reads them; Chronicle writes them itself,
-- together with the outbox and the idempotency record, in one transaction.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Events committed but not yet acknowledged by JetStream, in commit order. The relay
-- publishes them in `id` order and deletes a row only after its publish is acknowledged.
-- `envelope` is the exact message body, so the relay publishes without re-encoding.
CREATE TABLE outbox
(
    id                 bigserial PRIMARY KEY,
    subject            text   NOT NULL,
    message_id         text   NOT NULL,
    event_type         text   NOT NULL,
    event_version      text   NOT NULL,
    aggregate_sequence bigint NOT NULL,
    correlation_id     uuid   NOT NULL,
    envelope           bytea  NOT NULL
);

-- Responses of commands sent with an Idempotency-Key, committed with the command's events.
CREATE TABLE idempotency_keys
(
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       smallint    NOT NULL,
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
