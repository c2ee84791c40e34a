"""The harness's own test suite: which fixture plugins it loads, and the environment every test runs in.

Fixtures live in plugin modules (``tests/fix_*.py``, as psycopg's
``tests/fix_db.py``): ``tests/fix_db.py`` has the session's PostgreSQL
server and the fresh databases each test gets.  Plain helpers are imported
from their modules (``tests/projects.py``, ``tests/fix_db.py``).
"""

from __future__ import annotations

import os

pytest_plugins = ["pytester", "tests.fix_db"]

# Every incremental snapshot a rehearsal takes during the suite is compared
# with a full one (harness/tracking.py): the whole corpus checks the tracking.
os.environ.setdefault("HARNESS_SNAPSHOTS", "verify")

# The suite's servers, like every throwaway server, keep their files in
# memory when the machine has room (harness.postgres.server_root).
