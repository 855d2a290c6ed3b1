"""Writing files and folders atomically: readers see the old version or the new one, never half
of one, even if the writer dies. One helper for every writer (configs, checkpoints, samples)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, commit: bool = True) -> Iterator[Path]:
    """A hidden temporary path next to ``path`` (``.<name>.<pid>-<random>.partial``, in the same
    folder so that the rename is atomic) for the block to write a file or folder to. When the block
    ends without error it is renamed onto ``path`` (an existing folder there is replaced as a
    whole); on error, or with ``commit`` False (e.g. a process that does not write), it is removed."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        yield partial
        if commit:
            _replace(partial, path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def _replace(partial: Path, path: Path) -> None:
    if partial.is_dir() and path.is_dir():  # os.replace cannot replace a non-empty folder
        old = partial.with_suffix(".old")
        path.rename(old)
        partial.rename(path)
        shutil.rmtree(old)
    else:
        os.replace(partial, path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    with atomic_path(path) as partial:
        partial.write_text(text)
    return path
