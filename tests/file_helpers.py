"""Helpers for tests that must prove a user's files were not touched."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def tree_digest(root) -> dict:
    """relative path -> sha256 of every file below root (the user's data, to compare)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
