DROP FUNCTION accounts_touch();
DROP TABLE accounts;
