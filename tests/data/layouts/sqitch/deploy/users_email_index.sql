-- Deploy harness_sample:users_email_index to pg
-- requires: users

CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);
