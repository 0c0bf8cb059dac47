-- Moderation state, room settings, and full-text search (tsvector + GIN).
ALTER TABLE users ADD COLUMN banned_until BIGINT;
ALTER TABLE users ADD COLUMN ban_reason TEXT;
ALTER TABLE users ADD COLUMN muted_until BIGINT;
ALTER TABLE members ADD COLUMN muted_until BIGINT;
ALTER TABLE rooms ADD COLUMN slow_mode_seconds BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT FALSE;

-- 'simple': no stemming, so every language in a chat is searched alike.
ALTER TABLE messages ADD COLUMN search tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);
