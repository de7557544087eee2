"""Write every conversion beside its destination and rename it into place at the end.

A conversion can fail halfway (a malformed demo, a full disk, Ctrl-C); writing into a hidden
sibling folder and renaming only on success means DST is either the complete result or untouched.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from data.episodes import DatasetError


def staging_dir(dst: Path, overwrite: bool) -> Path:
    """A fresh hidden folder next to DST (same filesystem, so the final rename is atomic)."""
    if dst.exists() and not overwrite:
        raise DatasetError(f"{dst} already exists (pass --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))


def commit_staging(tmp: Path, dst: Path) -> None:
    """Replace DST by the finished staging folder."""
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
