DROP FUNCTION IF EXISTS touch_last_login(bigint);
ALTER TABLE users DROP COLUMN IF EXISTS last_login_at;
