-- Attachment metadata (the bytes live in the object store) and, on each message, the
-- attachment objects it carries as JSON, so that reading history needs no join.
CREATE TABLE attachments (
    id           BLOB PRIMARY KEY,
    room_id      BLOB NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id      BLOB NOT NULL REFERENCES users (id),
    filename     TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX attachments_room ON attachments (room_id);
ALTER TABLE messages ADD COLUMN attachments TEXT;
