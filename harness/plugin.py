"""The pytest plugin: ``pytest --migrate-plan NAME`` (filled in by the plans issue)."""

from __future__ import annotations
