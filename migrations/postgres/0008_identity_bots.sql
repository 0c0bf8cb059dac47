-- v1.1: accounts from an OpenID provider, bots, and admin rights held by the account itself
-- (an admin bot, or a member of the provider's admin group) beside the --admins list.
ALTER TABLE users ADD COLUMN external BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN bot BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE;

-- Who an external account is at its provider: the first token of an (issuer, subject) creates
-- the user; later tokens find it here, whatever their username claim says then.
CREATE TABLE external_identities (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX external_identities_user ON external_identities (user_id);

-- A bot's API keys: only the SHA-256 of each key is kept, looked up by equality.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key_hash   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT api_keys_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_user ON api_keys (user_id);
