-- A bounded context's schema and its event store, made by a function instead of a list of
-- names in a migration: `chronicle_commands::migrate` calls it for every context of the
-- list of contexts after the migrations, so a new context gets its schema, its event store
-- and where its readers stand by being listed, and a context already there is left as it
-- is (every statement is IF NOT EXISTS). The tables are those of migrations 0013 and 0014.
CREATE FUNCTION chronicle_context_store(context text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($ddl$
        CREATE SCHEMA IF NOT EXISTS %1$I;
        CREATE TABLE IF NOT EXISTS %1$I.projection_checkpoints
            (LIKE public.projection_checkpoints INCLUDING ALL);
        CREATE TABLE IF NOT EXISTS %1$I.parked_events (LIKE public.parked_events INCLUDING ALL);
        CREATE TABLE IF NOT EXISTS %1$I.events (
            aggregate_type text                         NOT NULL,
            aggregate_id   text                         NOT NULL,
            sequence       bigint CHECK (sequence >= 0) NOT NULL,
            event_type     text                         NOT NULL,
            event_version  text                         NOT NULL,
            payload        json                         NOT NULL,
            metadata       json                         NOT NULL,
            PRIMARY KEY (aggregate_type, aggregate_id, sequence)
        );
        CREATE TABLE IF NOT EXISTS %1$I.snapshots (
            aggregate_type   text                                 NOT NULL,
            aggregate_id     text                                 NOT NULL,
            last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
            current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
            payload          json                                 NOT NULL,
            PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
        );
        CREATE TABLE IF NOT EXISTS %1$I.outbox (
            id                 bigserial PRIMARY KEY,
            subject            text        NOT NULL,
            message_id         text        NOT NULL,
            event_type         text        NOT NULL,
            event_version      text        NOT NULL,
            aggregate_sequence bigint      NOT NULL,
            correlation_id     uuid        NOT NULL,
            envelope           bytea       NOT NULL,
            committed_at       timestamptz NOT NULL DEFAULT now(),
            trace_context      text
        );
        CREATE TABLE IF NOT EXISTS %1$I.idempotency_keys (
            scope        text        NOT NULL,
            key          text        NOT NULL,
            request_hash bytea       NOT NULL,
            status       smallint    NOT NULL,
            body         jsonb       NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (scope, key)
        );
        CREATE INDEX IF NOT EXISTS idempotency_keys_created_at
            ON %1$I.idempotency_keys (created_at);
        CREATE TABLE IF NOT EXISTS %1$I.unique_claims (
            namespace      text        NOT NULL,
            value          text        NOT NULL,
            aggregate_type text        NOT NULL,
            aggregate_id   text        NOT NULL,
            claimed_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (namespace, value)
        );
        CREATE TABLE IF NOT EXISTS %1$I.relay_position (
            id             boolean PRIMARY KEY DEFAULT true CHECK (id),
            stream_seq     bigint      NOT NULL,
            stream_created timestamptz NOT NULL,
            updated_at     timestamptz NOT NULL DEFAULT now()
        );
    $ddl$, context);
END
$fn$;
