-- Accounts; the first table.
CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION accounts_touch() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    NEW.created_at := coalesce(NEW.created_at, now());  -- keep; semicolons here are fine
    RETURN NEW;
END;
$body$;
