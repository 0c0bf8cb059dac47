-- What PostgreSQL alone commits into confab's schema, with no client in the way: one
-- transaction of a confab batch (the room's seq range taken, 512 messages inserted with
-- their unique client_ids), the rows generated inside the server. Run it with pgbench against
-- the database an `ingest` run left behind (see docs/BENCHMARKS.md):
--
--   pgbench -n -f scripts/bench/pg-insert-ceiling.sql -T 10 -c 1 <database>
--
-- messages/s = tps x 512.
WITH r AS (
    UPDATE rooms SET last_seq = last_seq + 512
    WHERE id = (SELECT id FROM rooms WHERE name LIKE 'ingest-%' ORDER BY created_at DESC LIMIT 1)
    RETURNING id, last_seq
), u AS (
    SELECT id FROM users WHERE username LIKE 'bench-ingest-%' ORDER BY created_at DESC LIMIT 1
)
INSERT INTO messages (id, room_id, seq, user_id, body, created_at, client_id)
SELECT gen_random_uuid(), r.id, r.last_seq - 512 + g, u.id, 'x', 0, gen_random_uuid()::text
FROM r, u, generate_series(1, 512) AS g;
