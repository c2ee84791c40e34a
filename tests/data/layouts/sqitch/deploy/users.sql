-- Deploy harness_sample:users to pg

BEGIN;

CREATE TABLE IF NOT EXISTS users (
    id bigint PRIMARY KEY,
    email text NOT NULL
);

COMMIT;
