-- v1.1: a per-room change counter (rev) carried by every message, reactions, threads, mentions
-- and pins. Messages committed before this migration keep rev 0: they are in the seq stream.
ALTER TABLE rooms ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
-- The root's seq for a reply in a thread.
ALTER TABLE messages ADD COLUMN thread BIGINT;
-- On roots: the summary as the protocol's JSON object, kept by the writer.
ALTER TABLE messages ADD COLUMN thread_summary TEXT;
-- The reactions aggregate as the protocol's JSON array, rewritten with each reaction.
ALTER TABLE messages ADD COLUMN reactions TEXT;
-- Mentioned members' ids as a JSON array, and whether @room was used.
ALTER TABLE messages ADD COLUMN mentions TEXT;
ALTER TABLE messages ADD COLUMN mentions_room BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN pinned_at BIGINT;

CREATE INDEX messages_room_rev ON messages (room_id, rev);
CREATE INDEX messages_thread ON messages (room_id, thread, seq) WHERE thread IS NOT NULL;
CREATE INDEX messages_pinned ON messages (room_id, pinned_at) WHERE pinned_at IS NOT NULL;
CREATE INDEX messages_mentions_room ON messages (room_id, seq) WHERE mentions_room;

-- One row per (message, emoji, user); rev orders first uses.
CREATE TABLE reactions (
    room_id UUID NOT NULL,
    seq     BIGINT NOT NULL,
    emoji   TEXT NOT NULL,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rev     BIGINT NOT NULL,
    PRIMARY KEY (room_id, seq, emoji, user_id),
    FOREIGN KEY (room_id, seq) REFERENCES messages (room_id, seq) ON DELETE CASCADE
);

-- One row per member mentioned by name, for the per-member mention counts of room listings.
CREATE TABLE mentions (
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_id UUID NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, seq),
    FOREIGN KEY (room_id, seq) REFERENCES messages (room_id, seq) ON DELETE CASCADE
);
