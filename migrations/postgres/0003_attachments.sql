-- Attachment metadata (the bytes live in the object store) and, on each message, the
-- attachment objects it carries as JSON, so that reading history needs no join.
CREATE TABLE attachments (
    id           UUID PRIMARY KEY,
    room_id      UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id      UUID NOT NULL REFERENCES users (id),
    filename     TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX attachments_room ON attachments (room_id);
ALTER TABLE messages ADD COLUMN attachments TEXT;
