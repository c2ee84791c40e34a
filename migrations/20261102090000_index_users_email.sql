-- Built without blocking writes: CONCURRENTLY cannot run inside a transaction,
-- so the harness runs this migration statement by statement.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON users (lower(email));
