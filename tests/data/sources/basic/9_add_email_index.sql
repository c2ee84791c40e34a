-- Built without blocking writes: cannot run inside a transaction block.
CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (lower(email));
