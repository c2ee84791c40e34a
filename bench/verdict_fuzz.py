"""The verdict differential test of whole rehearsals, with many random examples.

    python bench/verdict_fuzz.py [EXAMPLES]     # default 300

The test suite runs a fixed, derandomized set (tests/test_verdict_differential.py);
this runs EXAMPLES random histories (``HARNESS_FUZZ_EXAMPLES``), each rehearsed
with incremental and with full snapshots, stopping at the first item whose status
differs (or at a tracked state found wrong), shrunk by hypothesis.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if __name__ == "__main__":
    os.environ["HARNESS_FUZZ_EXAMPLES"] = sys.argv[1] if len(sys.argv) > 1 else "300"
    root = Path(__file__).resolve().parent.parent
    test = str(root / "tests" / "test_verdict_differential.py") + "::test_incremental_verdicts_equal_full_verdicts"
    sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", test]))
