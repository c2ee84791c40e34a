DO $$
BEGIN
    UPDATE users SET name = 'unknown' WHERE name IS NULL;
END
$$;
