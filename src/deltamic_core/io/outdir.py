"""Output directories and files that never lose a user's data.

Rules (issue 10):

- **ownership is proven, never guessed**: every directory the tool publishes holds a manifest
  (:data:`MANIFEST_NAME`, JSON: every file's relative path, size and SHA-256, written last).
  An existing output is replaced only when its contents match its manifest *exactly* (nothing
  added, removed or changed since the tool wrote it) and the caller passed ``overwrite=True``
  (the CLI's ``--overwrite``). Anything else is refused with one line.
- **an input is never inside what is replaced** (checked on resolved paths).
- **all-or-nothing**: a result is written into a hidden sibling ``.<name>.partial-<pid>-<hex>``
  and published by one rename; an existing result is swapped with it atomically
  (``renameat2(RENAME_EXCHANGE)`` on Linux), so at every instant the final name holds either
  the complete old result or the complete new one.
- **the location is validated before any work**: ``--out .``/``..``/an ancestor of the current
  directory, a missing or read-only parent, a file or symbolic link where a directory should be.
- **stale staging directories are swept**: a ``.<name>.partial-<pid>-*`` entry is removed only
  when process ``pid`` is gone and the entry is provably ours (it holds the staging marker, or a
  manifest that matches its contents).
- single files (``deltamic render --out image.tif``) are never overwritten without
  ``overwrite=True``, and then only a TIFF this tool wrote (its Software tag, see
  :data:`TIFF_SOFTWARE`).

"Collections" (a batch or time-lapse root: item sub-directories plus a few tables) are updated
in place: :class:`Collection` keeps a manifest of the root files (each listed with every hash
it may legitimately hold during an update, so a kill between two steps never makes the next
run refuse), and each item is an ordinary published result directory.

Every refusal is an :class:`OutputError` (a ``ValueError``) whose message names the option
(``option=``, e.g. ``"--out"``) so the CLI can print it as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "MANIFEST_NAME",
    "MARKER_NAME",
    "TIFF_SOFTWARE",
    "OutputError",
    "Collection",
    "check_output_dir",
    "check_output_file",
    "staged_output",
    "write_manifest",
    "manifest_matches",
    "is_ours",
    "sweep_stale",
    "remove_owned",
    "publish",
    "fault_point",
]

MANIFEST_NAME = ".deltamic-manifest.json"
MARKER_NAME = ".deltamic-staging"
TIFF_SOFTWARE = "deltamic"
_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")


class OutputError(ValueError):
    """An output location the tool refuses to use (message: one line, names the option)."""


# ---------------------------------------------------------------------------------------------
# fault injection (tests): DELTAMIC_TEST_KILL_AT=n kills the process with SIGKILL at the n-th
# write step (file written, directory created, rename), counted per process; with
# DELTAMIC_TEST_KILL_GROUP=1 the whole process group (a batch and its dask workers) is killed.
# DELTAMIC_TEST_FAULT_LOG=path appends one line per step (to count the steps of a run).
# ---------------------------------------------------------------------------------------------
_FAULT = {"n": 0}


def fault_point(what: str = "") -> None:
    """A write step; with ``DELTAMIC_TEST_KILL_AT=n`` the n-th step kills this process."""
    at = os.environ.get("DELTAMIC_TEST_KILL_AT")
    log = os.environ.get("DELTAMIC_TEST_FAULT_LOG")
    if not at and not log:
        return
    _FAULT["n"] += 1
    if log:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {_FAULT['n']} {what}\n")
    if at and _FAULT["n"] == int(at):
        import signal

        if os.environ.get("DELTAMIC_TEST_KILL_GROUP") == "1":
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _walk(root: Path) -> tuple[list[str], list[str], list[str]]:
    """(files, dirs, others) relative to ``root``, manifest and marker excluded; symlinks -> others."""
    files, dirs, others = [], [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        for n in list(dirnames):
            p = d / n
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                others.append(rel)
                dirnames.remove(n)
            else:
                dirs.append(rel)
        for n in filenames:
            p = d / n
            rel = p.relative_to(root).as_posix()
            if d == root and n in (MANIFEST_NAME, MARKER_NAME):
                continue
            if p.is_symlink() or not p.is_file():
                others.append(rel)
            else:
                files.append(rel)
    return sorted(files), sorted(dirs), sorted(others)


def write_manifest(directory: str | os.PathLike, kind: str = "result") -> dict:
    """Write ``directory``/MANIFEST_NAME listing every file below it (size, SHA-256); returns it."""
    from .._version import __version__

    root = Path(directory)
    files, dirs, others = _walk(root)
    if others:
        raise OSError(f"{root}: unexpected entries {others[:3]} in a staging directory")
    man = {
        "tool": "deltamic",
        "version": __version__,
        "kind": kind,
        "dirs": dirs,
        "files": {f: {"size": (root / f).stat().st_size, "sha256": [_sha256(root / f)]} for f in files},
    }
    _write_json_atomic(root / MANIFEST_NAME, man)
    return man


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    fault_point("manifest")
    os.replace(tmp, path)
    fault_point("manifest rename")


def read_manifest(directory: str | os.PathLike) -> dict | None:
    p = Path(directory) / MANIFEST_NAME
    try:
        if p.is_symlink() or not p.is_file():
            return None
        man = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(man, dict) or man.get("tool") != "deltamic" or not isinstance(man.get("files"), dict):
        return None
    return man


def _mismatch(directory: Path, man: dict, *, allow_subdirs: bool = False) -> str | None:
    """None if ``directory`` holds exactly what ``man`` lists, else the first difference."""
    files, dirs, others = _walk(directory)
    if others:
        return f"{others[0]!r} is not a regular file"
    listed = man.get("files", {})
    if allow_subdirs:  # a collection: only the root files are listed
        files = [f for f in files if "/" not in f]
        dirs = []
    for f in files:
        if f not in listed:
            return f"{f!r} was not written by deltamic"
    for f, info in listed.items():
        p = directory / f
        if not p.is_file():
            return f"{f!r} is missing"
        hashes = info.get("sha256") or []
        hashes = [hashes] if isinstance(hashes, str) else hashes
        if _sha256(p) not in hashes:
            return f"{f!r} was changed after deltamic wrote it"
    extra_dirs = set(dirs) - set(man.get("dirs", []))
    if extra_dirs:
        return f"{sorted(extra_dirs)[0]!r} was not written by deltamic"
    return None


def manifest_matches(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds a deltamic manifest matching its contents exactly."""
    d = Path(directory)
    man = read_manifest(d)
    return man is not None and man.get("kind", "result") == "result" and _mismatch(d, man) is None


def is_ours(directory: str | os.PathLike) -> bool:
    """A published result directory the tool wrote and nobody changed since."""
    d = Path(directory)
    return d.is_dir() and not d.is_symlink() and manifest_matches(d)


# ---------------------------------------------------------------------------------------------
# stale staging entries
# ---------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # never claim pid 0 / negative entries
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(parent: str | os.PathLike, name: str | None = None, *, owned_parent: bool = False) -> list[Path]:
    """Remove ``.<name>.partial-<pid>-<hex>`` entries of dead processes that are provably ours.

    A directory qualifies when it holds the staging marker or a manifest matching its contents;
    a plain file only inside a directory the tool owns (``owned_parent``: a collection root,
    whose temporary tables are named that way). Returns what was removed.
    """
    removed = []
    par = Path(parent)
    try:
        entries = list(par.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _PARTIAL_RE.match(p.name)
        if not m or (name is not None and m.group("name") != name):
            continue
        if int(m.group("pid")) == os.getpid() or _pid_alive(int(m.group("pid"))):
            continue
        try:
            if p.is_symlink():
                continue
            if p.is_dir():
                if (p / MARKER_NAME).is_file() or manifest_matches(p):
                    _remove_tree_marker_last(p)
                    removed.append(p)
            elif p.is_file() and owned_parent:
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def _remove_tree_marker_last(d: Path) -> None:
    """Delete a directory we own; the marker goes last so a kill midway leaves it sweepable."""
    marker = d / MARKER_NAME
    if not marker.exists():
        marker.write_text(json.dumps({"tool": "deltamic", "pid": os.getpid()}))
    for child in list(d.iterdir()):
        if child.name == MARKER_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    marker.unlink()
    d.rmdir()


def remove_owned(directory: str | os.PathLike) -> None:
    """Delete a result directory only if its manifest proves it is ours (else OutputError)."""
    d = Path(directory)
    if not is_ours(d):
        raise OutputError(f"{str(d)!r} is not a deltamic output directory: not removed")
    _remove_tree_marker_last(d)


# ---------------------------------------------------------------------------------------------
# validation (before any work)
# ---------------------------------------------------------------------------------------------
def _resolve(p: Path) -> Path:
    try:
        return p.resolve(strict=False)
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


def _check_location(out: Path, option: str, what: str) -> Path:
    text = str(out)
    if text == "" or out.name in ("", ".", ".."):
        raise OutputError(f"{option} {text!r} is not a {what} name: give a new {what}, e.g. {option} results")
    absolute = Path(os.path.abspath(out))
    cwd = _resolve(Path.cwd())
    target = _resolve(absolute)
    if target == cwd or target in cwd.parents:
        raise OutputError(f"{option} {text!r} is the current directory or one of its parents: give a new {what}")
    if out.is_symlink():
        raise OutputError(f"{option} {text!r} is a symbolic link: give a plain path")
    parent = absolute.parent
    if not parent.is_dir():
        raise OutputError(f"{option} {text!r}: directory {str(parent)!r} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {text!r}: directory {str(parent)!r} is not writable")
    return absolute


def _inputs_inside(target: Path, inputs: Iterable) -> list[str]:
    t = _resolve(target)
    bad = []
    for inp in inputs:
        if inp is None:
            continue
        r = _resolve(Path(os.fspath(inp)))
        if r == t or t in r.parents:
            bad.append(str(inp))
    return bad


def check_output_dir(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    option: str = "--out",
    resume: bool = False,
) -> Path:
    """Validate a result directory before any work; returns its absolute path.

    Accepted: a new name in a writable directory; an empty directory; with ``overwrite`` a
    directory holding exactly what deltamic wrote there (manifest). ``resume`` (a batch or
    time-lapse root) also accepts an existing collection the tool owns. ``inputs`` must not lie
    inside ``out``. Stale staging directories of killed runs next to ``out`` are swept.
    """
    outp = Path(os.fspath(out))
    absolute = _check_location(outp, option, "directory")
    bad = _inputs_inside(absolute, inputs)
    if bad:
        raise OutputError(f"{option} {str(outp)!r} contains the input {bad[0]!r}: choose another output directory")
    sweep_stale(absolute.parent, absolute.name)
    if not absolute.exists():
        return absolute
    if not absolute.is_dir():
        raise OutputError(f"{option} {str(outp)!r} exists and is a file, not a directory")
    if not os.access(absolute, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {str(outp)!r} is not writable")
    try:
        empty = not any(absolute.iterdir())
    except OSError as exc:
        raise OutputError(f"{option} {str(outp)!r} cannot be read ({exc.strerror})") from None
    if empty:
        return absolute
    man = read_manifest(absolute)
    if man is None:
        raise OutputError(
            f"{option} {str(outp)!r} exists and holds files deltamic did not write: choose a new or empty directory"
        )
    if man.get("kind") == "collection":
        problem = Collection(absolute, option=option).problem()
        if problem:
            raise OutputError(f"{option} {str(outp)!r}: {problem}: choose a new or empty directory")
        if resume:
            return absolute
    else:
        problem = _mismatch(absolute, man)
        if problem:
            raise OutputError(
                f"{option} {str(outp)!r} holds an earlier deltamic result but {problem}: "
                "not replacing it; choose a new directory"
            )
    if not overwrite:
        raise OutputError(
            f"{option} {str(outp)!r} holds the results of an earlier run: pass --overwrite to replace them"
        )
    return absolute


def check_output_file(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    option: str = "--out",
    suffixes=(".tif", ".tiff"),
) -> Path:
    """Validate a single output file (a TIFF) before any work; returns its absolute path.

    An existing file is replaced only with ``overwrite`` and only when it is a TIFF this tool
    wrote (Software tag :data:`TIFF_SOFTWARE`); never an input.
    """
    outp = Path(os.fspath(out))
    if suffixes and outp.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {str(outp)!r} must end in {' or '.join(suffixes)}")
    absolute = _check_location(outp, option, "file")
    if _inputs_inside(absolute, inputs):
        raise OutputError(f"{option} {str(outp)!r} is an input of this command: choose another output file")
    if read_manifest(absolute.parent) is not None:
        raise OutputError(
            f"{option} {str(outp)!r} is inside a deltamic output directory (adding or replacing a "
            "file there would spoil it): choose another location"
        )
    if not absolute.exists():
        return absolute
    if absolute.is_dir():
        raise OutputError(f"{option} {str(outp)!r} is a directory")
    if not overwrite:
        raise OutputError(f"{option} {str(outp)!r} exists: pass --overwrite to replace it, or choose another name")
    if not tiff_written_by_us(absolute):
        raise OutputError(
            f"{option} {str(outp)!r} exists and was not written by deltamic: not replacing it "
            "(even with --overwrite); choose another name"
        )
    return absolute


def tiff_written_by_us(path: str | os.PathLike) -> bool:
    try:
        import tifffile

        with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
            tag = tf.pages[0].tags.get("Software")
            return tag is not None and str(tag.value) == TIFF_SOFTWARE
    except Exception:  # noqa: BLE001 - unreadable means not provably ours
        return False


@contextlib.contextmanager
def _quiet_tifffile():
    import logging

    log = logging.getLogger("tifffile")
    old = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = old


# ---------------------------------------------------------------------------------------------
# staging and publishing
# ---------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = lib.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _libc = fn
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (True), or False when the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def _new_staging(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    (tmp / MARKER_NAME).write_text(json.dumps({"tool": "deltamic", "pid": os.getpid()}))
    fault_point("staging dir")
    return tmp


def publish(tmp: Path, final: Path, *, overwrite: bool = False, kind: str = "result") -> None:
    """Write the manifest of ``tmp`` and move it to ``final`` (swapping out an earlier result).

    ``final`` is re-checked at this point (it may have appeared or changed during the work):
    an existing ``final`` is replaced only if it is empty, or ours and ``overwrite``.
    """
    write_manifest(tmp, kind)  # the marker is not listed; it goes now, so a kill leaves one of the two
    (tmp / MARKER_NAME).unlink()
    fault_point("manifest written")
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise OutputError(f"{str(final)!r} appeared as a file during the run: the result stays in {str(tmp)!r}")
    if not final.exists():
        try:
            os.rename(tmp, final)  # fails if final appeared meanwhile as a non-empty directory
            fault_point("published")
            return
        except OSError:
            if not final.is_dir():
                raise
    empty = not any(final.iterdir())
    if not empty and not (overwrite and is_ours(final)):
        raise OutputError(
            f"{str(final)!r} changed during the run and is not replaced; the new result is in {str(tmp)!r}"
        )
    if _exchange(tmp, final):
        fault_point("exchanged")
        # tmp now holds the old result (its manifest proves it ours, so a sweep can take it)
        if empty:
            tmp.rmdir()
        else:
            _remove_tree_marker_last(tmp)
        fault_point("old removed")
        return
    # no atomic exchange: move the old one aside under a staging name, then rename
    aside = final.with_name(f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(final, aside)
    fault_point("old aside")
    os.rename(tmp, final)
    fault_point("published")
    if empty:
        aside.rmdir()
    else:
        _remove_tree_marker_last(aside)


@contextlib.contextmanager
def staged_output(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    option: str = "--out",
    checked: bool = False,
    kind: str = "result",
) -> Iterator[Path]:
    """Yield a fresh staging directory that becomes ``out`` (with its manifest) on success.

    The location is validated first (:func:`check_output_dir`, unless ``checked``); on an
    exception the staging directory is removed and ``out`` is left exactly as it was.
    """
    final = Path(os.path.abspath(os.fspath(out)))
    if not checked:
        check_output_dir(out, overwrite=overwrite, inputs=inputs, option=option)
    tmp = _new_staging(final)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            _remove_tree_marker_last(tmp)
        raise
    try:
        publish(tmp, final, overwrite=overwrite, kind=kind)
    except OutputError:
        raise
    except BaseException:
        if tmp.exists() and read_manifest(tmp) is not None and not (tmp / MARKER_NAME).exists():
            with contextlib.suppress(OSError):
                _remove_tree_marker_last(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# collections: a batch / time-lapse root updated in place
# ---------------------------------------------------------------------------------------------
class Collection:
    """A directory of result sub-directories plus root tables, owned through a manifest.

    ``open()`` creates it (or checks an existing one is ours); ``write_text(name, text)``
    replaces a root file so that at every instant the manifest accepts what is on disk; item
    sub-directories are published with :func:`staged_output` (``checked=True``).
    """

    def __init__(self, root: str | os.PathLike, *, option: str = "--out"):
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.option = option

    def problem(self) -> str | None:
        man = read_manifest(self.root)
        if man is None or man.get("kind") != "collection":
            return "it holds files deltamic did not write"
        sweep_stale(self.root, owned_parent=True)
        bad = _mismatch(self.root, man, allow_subdirs=True)
        if bad:
            return bad
        for child in self.root.iterdir():
            if child.name in (MANIFEST_NAME,) or child.name in man["files"]:
                continue
            if child.is_dir() and not child.is_symlink():
                if _PARTIAL_RE.match(child.name):
                    continue  # a live run's staging directory
                sub = read_manifest(child)
                if sub is None:
                    if any(child.iterdir()):
                        return f"{child.name!r} was not written by deltamic"
                    continue
                if sub.get("kind") == "collection":
                    sub_problem = Collection(child).problem()
                    if sub_problem:
                        return f"{child.name}/: {sub_problem}"
                    continue
                bad = _mismatch(child, sub)
                if bad:
                    return f"in {child.name!r}: {bad}"
            else:
                return f"{child.name!r} was not written by deltamic"
        return None

    def open(self) -> Collection:
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise OutputError(f"{self.option} {str(self.root)!r} exists and is not a directory")
        if not self.root.exists():
            # the same staged publish as a result directory (manifest first, then one rename)
            tmp = _new_staging(self.root)
            try:
                publish(tmp, self.root, kind="collection")
            except (OutputError, OSError):
                # another run created it meanwhile (ours is not needed: checked just below), or
                # it could not be created
                if tmp.exists():
                    _remove_tree_marker_last(tmp)
                if not self.root.is_dir():
                    raise
            fault_point("collection created")
        if read_manifest(self.root) is None:
            if any(p.name != MANIFEST_NAME for p in self.root.iterdir()):
                raise OutputError(f"{self.option} {str(self.root)!r} holds files deltamic did not write")
            write_manifest(self.root, "collection")
        problem = self.problem()
        if problem:
            raise OutputError(f"{self.option} {str(self.root)!r}: {problem}: choose a new or empty directory")
        return self

    def _manifest(self) -> dict:
        man = read_manifest(self.root)
        if man is None:
            raise OutputError(f"{str(self.root)!r} lost its deltamic manifest during the run")
        return man

    def write_bytes(self, name: str, data: bytes) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"collection file name must be a plain name, got {name!r}")
        target = self.root / name
        if target.is_symlink() or target.is_dir():
            raise OutputError(f"{str(target)!r} is not a file deltamic wrote")
        tmp = self.root / f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point("collection tmp")
        new_hash = hashlib.sha256(data).hexdigest()
        man = self._manifest()
        entry = man["files"].get(name)
        if target.exists():
            if entry is None:
                tmp.unlink()
                raise OutputError(f"{str(target)!r} was not written by deltamic: not replacing it")
            old = _sha256(target)
            if old not in entry["sha256"]:
                tmp.unlink()
                raise OutputError(f"{str(target)!r} was changed after deltamic wrote it: not replacing it")
            man["files"][name] = {"size": len(data), "sha256": [old, new_hash]}
        else:
            man["files"][name] = {"size": len(data), "sha256": [new_hash]}
        _write_json_atomic(self.root / MANIFEST_NAME, man)
        os.replace(tmp, target)
        fault_point("collection file")
        man["files"][name] = {"size": len(data), "sha256": [new_hash]}
        _write_json_atomic(self.root / MANIFEST_NAME, man)
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def item(self, name: str) -> Path:
        """The path of item ``name`` (a safe, non-empty single path component)."""
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
            raise ValueError(f"unsafe item name {name!r}")
        return self.root / name

    def stage_item(self, name: str, *, replace_failed: bool = True):
        """staged_output for an item directory (an existing item of ours is replaced)."""
        final = self.item(name)
        sweep_stale(self.root, name)
        if final.exists() and not (is_ours(final) or (final.is_dir() and not any(final.iterdir()))):
            raise OutputError(f"{str(final)!r} holds files deltamic did not write: not replacing it")
        return staged_output(final, overwrite=True, checked=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_item_name(stem: str) -> str:
    """A non-empty, safe directory name for ``stem`` (``Path.stem`` of an input).

    Characters outside ``[A-Za-z0-9._+-]`` become ``_``; leading dots are dropped (a hidden or
    ``..`` name could collapse onto the root); an empty result becomes ``item``.
    """
    name = _UNSAFE.sub("_", str(stem)).lstrip(".")
    name = name.strip() or "item"
    return name[:200]


def unique_item_names(stems) -> list[str]:
    """:func:`safe_item_name` of each stem, de-duplicated in order with ``-2``, ``-3``... suffixes."""
    out, seen = [], set()
    for s in stems:
        base = safe_item_name(s)
        name, k = base, 2
        while name.lower() in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name.lower())
        out.append(name)
    return out
