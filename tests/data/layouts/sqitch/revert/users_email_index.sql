-- Revert harness_sample:users_email_index from pg

DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;
