-- v1.1: `message.created` without a row per message in the commit. The group commit writes one
-- row per room and webhook for the messages a batch added to that room (their seqs are
-- consecutive there); the delivery worker turns each range into one event per message, off
-- the commit's path, in the transaction that claims events.
CREATE TABLE webhook_message_ranges (
    id         INTEGER PRIMARY KEY,
    webhook_id BLOB NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    room_id    BLOB NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
