-- v1.1: accounts from an OpenID provider, bots, and admin rights held by the account itself
-- (an admin bot, or a member of the provider's admin group) beside the --admins list.
ALTER TABLE users ADD COLUMN external INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN bot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;

-- Who an external account is at its provider: the first token of an (issuer, subject) creates
-- the user; later tokens find it here, whatever their username claim says then.
CREATE TABLE external_identities (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX external_identities_user ON external_identities (user_id);

-- A bot's API keys: only the SHA-256 of each key is kept, looked up by equality.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key_hash   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    CONSTRAINT api_keys_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_user ON api_keys (user_id);
