-- Verify harness_sample:users on pg

BEGIN;

SELECT id, email FROM users WHERE FALSE;

ROLLBACK;
