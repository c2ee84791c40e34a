-- Up Migration
CREATE TABLE IF NOT EXISTS users (
    id bigint PRIMARY KEY,
    email text NOT NULL
);

-- Down Migration
DROP TABLE IF EXISTS users;
