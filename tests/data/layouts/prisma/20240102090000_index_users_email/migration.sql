-- A migration of its own: Prisma sends one statement alone, outside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS "users_email_idx" ON "users" ("email");
