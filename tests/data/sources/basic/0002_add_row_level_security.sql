/* The whole file is one transaction; the harness strips the wrapper. */
BEGIN;

ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY accounts_owner ON accounts
    USING (email = current_setting('app.email', true));

COMMIT;
