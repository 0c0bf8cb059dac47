-- confab schema, SQLite. Mirrors migrations/postgres: ids are 16-byte BLOB UUIDs, booleans
-- INTEGER 0/1, times milliseconds since the Unix epoch.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    username      TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE token_families (
    id         BLOB PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    revoked    INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX token_families_user ON token_families (user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  BLOB NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    spent      INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE rooms (
    id         BLOB PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('public', 'private', 'direct')),
    topic      TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    created_by BLOB NOT NULL REFERENCES users (id),
    last_seq   INTEGER NOT NULL DEFAULT 0,
    archived   INTEGER NOT NULL DEFAULT 0,
    managed_by TEXT,
    dm_key     TEXT,
    CONSTRAINT rooms_name_key UNIQUE (name),
    CONSTRAINT rooms_dm_key UNIQUE (dm_key)
);

CREATE TABLE members (
    room_id            BLOB NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id            BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role               TEXT NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    last_read_seq      INTEGER NOT NULL DEFAULT 0,
    last_delivered_seq INTEGER NOT NULL DEFAULT 0,
    joined_at          INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_user ON members (user_id);

CREATE TABLE messages (
    id         BLOB PRIMARY KEY,
    room_id    BLOB NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id),
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    edited_at  INTEGER,
    deleted    INTEGER NOT NULL DEFAULT 0,
    client_id  TEXT,
    reply_to   INTEGER,
    CONSTRAINT messages_room_seq_key UNIQUE (room_id, seq),
    CONSTRAINT messages_user_client_id_key UNIQUE (user_id, client_id)
);
