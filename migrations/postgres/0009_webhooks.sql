-- v1.1: webhooks. Each registered endpoint, and a durable outbox: every event a webhook
-- subscribes to is written here in the transaction of the change that causes it, then
-- delivered (and retried) by whichever pod claims it.
CREATE TABLE webhooks (
    id         UUID PRIMARY KEY,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,     -- JSON array of event types
    secret     TEXT NOT NULL,     -- whsec_…
    managed_by TEXT,              -- the resource or file that declared it, if any
    created_at BIGINT NOT NULL
);

CREATE TABLE webhook_events (
    id              TEXT PRIMARY KEY,   -- the webhook-id header, the same on every retry
    webhook_id      UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event           TEXT NOT NULL,
    body            TEXT NOT NULL,      -- the exact JSON posted, fixed at commit
    created_at      BIGINT NOT NULL,
    state           TEXT NOT NULL,      -- due, delivered, failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_until    BIGINT
);
CREATE INDEX webhook_events_due ON webhook_events (state, next_attempt_at);

CREATE TABLE webhook_deliveries (
    webhook_id UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id   TEXT NOT NULL,
    event      TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    status     BIGINT,
    error      TEXT,
    at         BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (webhook_id, at);
