-- Queries of the application version currently deployed.
SELECT id, email FROM users WHERE id = $1;

SELECT count(*)
  FROM users
 WHERE role = $1;
