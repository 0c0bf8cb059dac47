-- Per-room message retention (days), set by a ChatRoom resource; NULL follows the policy.
ALTER TABLE rooms ADD COLUMN retention_days INTEGER;
