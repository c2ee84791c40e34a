-- Create "users" table
CREATE TABLE IF NOT EXISTS "users" ("id" bigint NOT NULL, "email" text NOT NULL, PRIMARY KEY ("id"));
