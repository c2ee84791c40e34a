-- CreateTable
CREATE TABLE IF NOT EXISTS "users" (
    "id" BIGINT NOT NULL,
    "email" TEXT NOT NULL,

    CONSTRAINT "users_pkey" PRIMARY KEY ("id")
);
