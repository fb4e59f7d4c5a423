-- The W3C trace context of the command that wrote each outbox row, when spans are exported
-- (OTEL_EXPORTER_OTLP_ENDPOINT): the relay sends it on as the `traceparent` header, so the
-- projectors and sagas that handle the event continue the request's trace.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS trace_context text;
