-- atlas:txmode none

-- Create index "users_email_idx" to table: "users"
CREATE INDEX CONCURRENTLY IF NOT EXISTS "users_email_idx" ON "users" ("email");
