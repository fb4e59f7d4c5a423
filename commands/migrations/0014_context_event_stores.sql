-- Each bounded context's event store in its own schema: its events, snapshots, outbox,
-- idempotency records, claims and the relay's position there, beside the rest of its tables
-- (migration 0013). A context's pool has only its schema on its `search_path`, so the event
-- store's unqualified SQL reads and writes the context's own store; each outbox has its own
-- relay. The tables in `public` stay, for an event store on a plain pool (one store for
-- every aggregate), and hold nothing of the contexts' after this.
--
-- A database from before keeps every row: each event, snapshot, claim and outbox row moves
-- to its aggregate's context (outbox rows in their order), the relay's position is each
-- context's starting point (every event published before it is in the stream at or below
-- it), and idempotency records are copied to every context (a retried request finds its
-- record in whichever context answers it; they expire as before).
DO $$
DECLARE
    context text;
BEGIN
    FOREACH context IN ARRAY
        ARRAY['identity', 'commerce', 'blog', 'chat', 'files', 'scheduler', 'monitoring']
    LOOP
        EXECUTE format($ddl$
            CREATE TABLE %1$I.events (
                aggregate_type text                         NOT NULL,
                aggregate_id   text                         NOT NULL,
                sequence       bigint CHECK (sequence >= 0) NOT NULL,
                event_type     text                         NOT NULL,
                event_version  text                         NOT NULL,
                payload        json                         NOT NULL,
                metadata       json                         NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence)
            );
            CREATE TABLE %1$I.snapshots (
                aggregate_type   text                                 NOT NULL,
                aggregate_id     text                                 NOT NULL,
                last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
                current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
                payload          json                                 NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
            );
            CREATE TABLE %1$I.outbox (
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
            CREATE TABLE %1$I.idempotency_keys (
                scope        text        NOT NULL,
                key          text        NOT NULL,
                request_hash bytea       NOT NULL,
                status       smallint    NOT NULL,
                body         jsonb       NOT NULL,
                created_at   timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (scope, key)
            );
            CREATE INDEX idempotency_keys_created_at ON %1$I.idempotency_keys (created_at);
            CREATE TABLE %1$I.unique_claims (
                namespace      text        NOT NULL,
                value          text        NOT NULL,
                aggregate_type text        NOT NULL,
                aggregate_id   text        NOT NULL,
                claimed_at     timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (namespace, value)
            );
            CREATE TABLE %1$I.relay_position (
                id             boolean PRIMARY KEY DEFAULT true CHECK (id),
                stream_seq     bigint      NOT NULL,
                stream_created timestamptz NOT NULL,
                updated_at     timestamptz NOT NULL DEFAULT now()
            );
        $ddl$, context);
    END LOOP;
END $$;

-- Which context each aggregate type belongs to (`AggregateKind::CONTEXT`).
CREATE TEMPORARY TABLE aggregate_contexts (aggregate_type text PRIMARY KEY, context text NOT NULL);
INSERT INTO aggregate_contexts VALUES
    ('user', 'identity'),
    ('inventory_item', 'commerce'), ('order', 'commerce'), ('coupon', 'commerce'),
    ('post', 'blog'), ('comment', 'blog'),
    ('room', 'chat'),
    ('file', 'files'), ('upload', 'files'), ('tus_upload', 'files'), ('share', 'files'),
    ('job', 'scheduler'),
    ('rule', 'monitoring');

DO $$
DECLARE
    context text;
BEGIN
    FOREACH context IN ARRAY
        ARRAY['identity', 'commerce', 'blog', 'chat', 'files', 'scheduler', 'monitoring']
    LOOP
        EXECUTE format($move$
            INSERT INTO %1$I.events
                SELECT e.* FROM public.events e JOIN aggregate_contexts a USING (aggregate_type)
                WHERE a.context = %2$L;
            INSERT INTO %1$I.snapshots
                SELECT s.* FROM public.snapshots s JOIN aggregate_contexts a USING (aggregate_type)
                WHERE a.context = %2$L;
            INSERT INTO %1$I.unique_claims
                SELECT c.* FROM public.unique_claims c JOIN aggregate_contexts a USING (aggregate_type)
                WHERE a.context = %2$L;
            INSERT INTO %1$I.outbox (subject, message_id, event_type, event_version,
                                     aggregate_sequence, correlation_id, envelope, committed_at,
                                     trace_context)
                SELECT subject, message_id, event_type, event_version, aggregate_sequence,
                       correlation_id, envelope, committed_at, trace_context
                FROM public.outbox WHERE split_part(subject, '.', 2) = %2$L ORDER BY id;
            INSERT INTO %1$I.idempotency_keys SELECT * FROM public.idempotency_keys;
            INSERT INTO %1$I.relay_position SELECT * FROM public.relay_position;
        $move$, context, context);
    END LOOP;
END $$;

DELETE FROM public.events e USING aggregate_contexts a WHERE a.aggregate_type = e.aggregate_type;
DELETE FROM public.snapshots s USING aggregate_contexts a WHERE a.aggregate_type = s.aggregate_type;
DELETE FROM public.unique_claims c USING aggregate_contexts a WHERE a.aggregate_type = c.aggregate_type;
DELETE FROM public.outbox
    WHERE split_part(subject, '.', 2) IN
        ('identity', 'commerce', 'blog', 'chat', 'files', 'scheduler', 'monitoring');
DELETE FROM public.idempotency_keys;
DROP TABLE aggregate_contexts;
