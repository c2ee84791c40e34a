-- Revert harness_sample:users from pg

BEGIN;

DROP TABLE IF EXISTS users;

COMMIT;
