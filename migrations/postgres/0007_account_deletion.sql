-- v1.1: deleted accounts. The row stays (messages keep their author) but the account is gone:
-- it cannot log in, refresh or be found.
ALTER TABLE users ADD COLUMN deleted_at BIGINT;
-- A user's messages in time order, for their data export.
CREATE INDEX messages_user_time ON messages (user_id, created_at, id);
