"""The differential property test of the tracking, with many random examples.

    python bench/tracking_fuzz.py [EXAMPLES]     # default 2000

The test suite runs a fixed, derandomized set (tests/test_tracking_property.py);
this runs EXAMPLES random ones (``HARNESS_FUZZ_EXAMPLES``), stopping at the first
difference between an incremental and a full snapshot, shrunk by hypothesis.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if __name__ == "__main__":
    os.environ["HARNESS_FUZZ_EXAMPLES"] = sys.argv[1] if len(sys.argv) > 1 else "2000"
    root = Path(__file__).resolve().parent.parent
    sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", str(root / "tests" / "test_tracking_property.py")]))
