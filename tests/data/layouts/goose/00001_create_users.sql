-- +goose Up
CREATE TABLE IF NOT EXISTS users (
    id bigint PRIMARY KEY,
    email text NOT NULL
);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION users_lower_email() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.email := lower(NEW.email);
    RETURN NEW;
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION IF EXISTS users_lower_email();
DROP TABLE IF EXISTS users;
