-- migrate:up
CREATE TABLE IF NOT EXISTS users (
    id bigint PRIMARY KEY,
    email text NOT NULL
);

-- migrate:down
DROP TABLE IF EXISTS users;
