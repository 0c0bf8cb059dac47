-- Ingest: the messages' foreign keys to rooms and users are checked by a trigger per inserted
-- row, a quarter of PostgreSQL's time in a group commit (docs/BENCHMARKS.md), and prove nothing
-- the writer's transaction does not prove already: it allocates the seqs with
-- `UPDATE rooms ... WHERE id = $room RETURNING`, which finds the room and holds its row lock
-- until the commit, and the sender is a signed-in account. No room or account row is ever
-- deleted (a room is archived, a deleted account marked `deleted_at`), so nothing cascades.
-- Dropping a constraint removes nothing the previous release reads.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_room_id_fkey;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_user_id_fkey;
