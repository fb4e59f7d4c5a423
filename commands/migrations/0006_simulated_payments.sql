-- The simulated payment provider's own records (gateway/src/payments.rs): one charge per
-- order (the order id is the provider's idempotency key) and what of it was refunded. It
-- stands in for a real provider's ledger, shared by every process that charges or refunds.
CREATE TABLE IF NOT EXISTS simulated_payments (
    order_id       text PRIMARY KEY,
    payment_id     text        NOT NULL,
    charged_cents  bigint      NOT NULL,
    refunded_cents bigint      NOT NULL DEFAULT 0,
    refund_id      text,
    charged_at     timestamptz NOT NULL DEFAULT now()
);
