-- confab schema, PostgreSQL. Times are milliseconds since the Unix epoch (BIGINT), as in the
-- SQLite schema, so both backends share one query dialect.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    username      TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE token_families (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE INDEX token_families_user ON token_families (user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  UUID NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    spent      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE rooms (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('public', 'private', 'direct')),
    topic      TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    created_by UUID NOT NULL REFERENCES users (id),
    last_seq   BIGINT NOT NULL DEFAULT 0,
    archived   BOOLEAN NOT NULL DEFAULT FALSE,
    managed_by TEXT,
    dm_key     TEXT,
    CONSTRAINT rooms_name_key UNIQUE (name),
    CONSTRAINT rooms_dm_key UNIQUE (dm_key)
);

CREATE TABLE members (
    room_id            UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id            UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role               TEXT NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    last_read_seq      BIGINT NOT NULL DEFAULT 0,
    last_delivered_seq BIGINT NOT NULL DEFAULT 0,
    joined_at          BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_user ON members (user_id);

CREATE TABLE messages (
    id         UUID PRIMARY KEY,
    room_id    UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    edited_at  BIGINT,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    client_id  TEXT,
    reply_to   BIGINT,
    CONSTRAINT messages_room_seq_key UNIQUE (room_id, seq),
    CONSTRAINT messages_user_client_id_key UNIQUE (user_id, client_id)
);
