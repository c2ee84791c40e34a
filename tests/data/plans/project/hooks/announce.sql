SELECT pg_notify('deploys', 'migrating');
