"""Command-line front end of apply, dev-db, backups and restore (filled in by the apply work)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add this module's subcommands to *sub*; return name -> handler."""
    return {}
