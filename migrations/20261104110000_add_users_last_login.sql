-- Nullable, no default: a catalog-only change that old application versions ignore.
ALTER TABLE users ADD COLUMN IF NOT EXISTS last_login_at timestamptz;

CREATE OR REPLACE FUNCTION touch_last_login(p_user bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE users SET last_login_at = now() WHERE id = p_user;
$$;
