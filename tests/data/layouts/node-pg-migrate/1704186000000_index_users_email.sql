-- no transaction
-- Up Migration
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);

-- Down Migration
DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;
