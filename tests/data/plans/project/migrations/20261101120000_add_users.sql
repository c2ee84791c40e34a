CREATE TABLE users (id bigint PRIMARY KEY, email text, role text NOT NULL DEFAULT 'user');
