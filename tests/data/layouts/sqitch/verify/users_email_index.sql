-- Verify harness_sample:users_email_index on pg

SELECT 1 / count(*) FROM pg_indexes WHERE indexname = 'users_email_idx';
