-- Statut du compte : « actif » ou « fermé ».
CREATE TYPE account_status AS ENUM ('actif', 'fermé');
ALTER TYPE account_status ADD VALUE 'suspendu' BEFORE 'fermé';
ALTER TABLE accounts ADD COLUMN status account_status NOT NULL DEFAULT 'actif';
