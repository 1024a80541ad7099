"""Atomic file writing: output either appears complete or not at all.

A crashed or interrupted writer must never leave a truncated TIFF or mesh behind (a later
run would read it as valid input). Everything is written to a temporary file in the target's
directory (same file system, so the final ``os.replace`` is an atomic rename) and only moved
into place once the writer has finished without error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any threads write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, encoding: str | None = None):
    """Write ``path`` atomically (temporary file in the same directory, then ``os.replace``).

    Parameters
    ----------
    path : str or os.PathLike
        Final destination. Its directory must exist. An existing file is replaced only when the
        ``with`` block finishes without an exception; on any exception the temporary file is
        removed and ``path`` is left untouched.
    mode : {"wb", "w", "path"}
        ``"wb"`` (default) yields a binary file object, ``"w"`` a text file object (``encoding``
        defaults to UTF-8). ``"path"`` yields the temporary file's :class:`pathlib.Path` (same
        suffix as ``path``, so libraries that pick the format from the name work) for writers
        that only accept file names; the caller writes to that name.

    Yields
    ------
    file object or pathlib.Path

    Examples
    --------
    >>> with atomic_write("out.txt", "w") as fh:  # doctest: +SKIP
    ...     fh.write("hello")
    """
    if mode not in ("wb", "w", "path"):
        raise ValueError(f"mode must be 'wb', 'w' or 'path', got {mode!r}")
    target = Path(os.fspath(path))
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {target}: directory {directory} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a directory")
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
    tmp = Path(tmp_name)
    try:
        if mode == "path":
            os.close(fd)
            yield tmp
        else:
            kwargs = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
            with os.fdopen(fd, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        try:
            mode_bits = os.stat(target).st_mode & 0o777 if target.exists() else 0o666 & ~_UMASK
            os.chmod(tmp, mode_bits)
        except OSError:
            pass
        from .outdir import fault_point

        fault_point(f"write {target.name}")
        os.replace(tmp, target)
        fault_point(f"replace {target.name}")
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
