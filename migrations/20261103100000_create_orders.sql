BEGIN;

DO $$
BEGIN
    CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped');
EXCEPTION
    WHEN duplicate_object THEN NULL;  -- already there: re-running is harmless
END
$$;

CREATE TABLE IF NOT EXISTS orders (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint       NOT NULL REFERENCES users (id),
    status     order_status NOT NULL DEFAULT 'pending',
    total      numeric(12, 2) NOT NULL CHECK (total >= 0),
    created_at timestamptz  NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS orders_user_id_idx ON orders (user_id);

COMMIT;
