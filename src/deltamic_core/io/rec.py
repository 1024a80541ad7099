"""The native ``.rec`` multi-material mesh format (text and binary).

Text layout::

    N
    c0 c1 c2            (N lines: float vertex coordinates)
    M
    i j k l1 l2         (M lines: 0-based vertex indices, then the labels on each side)
    # spacing = s0 s1 s2     (optional trailing comments)
    # axis_order = zyx
    # units = voxel

Binary layout (little endian): uint64 N, float64 [N, 3], uint64 M, then M packed records of
int64[3] vertex indices + int32[2] labels, optionally followed by the same ``#`` comment lines
as UTF-8 text. The two are told apart by whether the file decodes as UTF-8 text (a binary file
always contains NUL bytes in its 8-byte counts).

Coordinates are in the file's own frame: by default voxel units of the source stack in array
axis order. The ``# spacing`` values are listed in the same column order as the coordinates,
so ``column * spacing`` is micrometres. This module only parses and serialises; unit and axis
conversions live in :mod:`deltamic_core.io.mesh_io`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_write

__all__ = ["RecData", "read_rec", "write_rec"]

_RECORD = np.dtype([("faces", "<i8", (3,)), ("labels", "<i4", (2,))])


@dataclass
class RecData:
    """Raw content of a .rec file (coordinates exactly as stored)."""

    coords: np.ndarray  # (N, 3) float64, file units and column order
    faces: np.ndarray  # (M, 3) int64
    labels: np.ndarray  # (M, 2) int32
    comments: dict = field(default_factory=dict)  # parsed '# key = value' lines (values as strings)
    binary: bool = False


def _parse_comments(lines) -> dict:
    out = {}
    for line in lines:
        body = line.lstrip("#").strip()
        if "=" in body:
            key, value = body.split("=", 1)
            out[key.strip().lower()] = value.strip()
        elif ":" in body:
            key, value = body.split(":", 1)
            out[key.strip().lower()] = value.strip()
    return out


def _is_text(raw: bytes) -> bool:
    if b"\x00" in raw[:4096]:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_text(text: str, path: str) -> RecData:
    data_lines, comment_lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comment_lines.append(stripped)
        else:
            data_lines.append((number, stripped))
    if not data_lines:
        raise ValueError(f"{path}: empty .rec file")

    def count(pos: int, what: str) -> int:
        if pos >= len(data_lines):
            raise ValueError(f"{path}: truncated .rec file: expected the number of {what}")
        number, line = data_lines[pos]
        try:
            value = int(line)
        except ValueError:
            raise ValueError(f"{path}, line {number}: expected the number of {what}, got {line[:60]!r}") from None
        if value < 0:
            raise ValueError(f"{path}, line {number}: negative number of {what}")
        return value

    n = count(0, "points")
    vert_lines = data_lines[1 : 1 + n]
    if len(vert_lines) < n:
        raise ValueError(f"{path}: truncated .rec file: {n} points announced, {len(vert_lines)} found")
    m = count(1 + n, "triangles")
    face_lines = data_lines[2 + n : 2 + n + m]
    if len(face_lines) < m:
        raise ValueError(f"{path}: truncated .rec file: {m} triangles announced, {len(face_lines)} found")
    if len(data_lines) > 2 + n + m:
        number, line = data_lines[2 + n + m]
        raise ValueError(f"{path}, line {number}: unexpected data after the last triangle: {line[:60]!r}")

    def table(lines, width, dtype, what):
        try:
            arr = np.array(" ".join(line for _, line in lines).split(), dtype=dtype)
        except ValueError:
            arr = None
        if arr is None or arr.size != width * len(lines):
            for number, line in lines:
                parts = line.split()
                try:
                    np.array(parts, dtype=dtype)
                    ok = len(parts) == width
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(f"{path}, line {number}: expected {width} {what} values, got {line[:80]!r}")
        return arr.reshape(len(lines), width)

    coords = table(vert_lines, 3, np.float64, "coordinate")
    records = table(face_lines, 5, np.int64, "integer (i j k label1 label2)")
    return RecData(
        coords=coords,
        faces=np.ascontiguousarray(records[:, :3]),
        labels=np.ascontiguousarray(records[:, 3:].astype(np.int32)),
        comments=_parse_comments(comment_lines),
        binary=False,
    )


def _parse_binary(raw: bytes, path: str) -> RecData:
    size = len(raw)
    if size < 16:
        raise ValueError(f"{path}: not a .rec file (binary file of only {size} bytes)")
    n = int(np.frombuffer(raw, "<u8", 1, 0)[0])
    end_v = 8 + 24 * n
    if end_v + 8 > size:
        raise ValueError(f"{path}: truncated or invalid binary .rec file ({n} points announced, {size} bytes)")
    coords = np.frombuffer(raw, "<f8", 3 * n, 8).reshape(n, 3).astype(np.float64)
    m = int(np.frombuffer(raw, "<u8", 1, end_v)[0])
    end_f = end_v + 8 + _RECORD.itemsize * m
    if end_f > size:
        raise ValueError(f"{path}: truncated or invalid binary .rec file ({m} triangles announced, {size} bytes)")
    rec = np.frombuffer(raw, _RECORD, m, end_v + 8)
    tail = raw[end_f:]
    comments = {}
    if tail.strip():
        try:
            text = tail.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: {len(tail)} unexpected bytes after the last triangle") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if any(not line.startswith("#") for line in lines):
            raise ValueError(f"{path}: unexpected text after the last triangle (only '#' comments allowed)")
        comments = _parse_comments(lines)
    return RecData(
        coords=coords,
        faces=rec["faces"].astype(np.int64),
        labels=rec["labels"].astype(np.int32),
        comments=comments,
        binary=True,
    )


def read_rec(path) -> RecData:
    """Parse a text or binary ``.rec`` file without any unit or axis conversion.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, malformed, or has face indices out of range.
    """
    path = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    raw = Path(path).read_bytes()
    data = _parse_text(raw.decode("utf-8"), path) if _is_text(raw) else _parse_binary(raw, path)
    if not np.all(np.isfinite(data.coords)):
        raise ValueError(f"{path}: NaN or Inf vertex coordinates")
    if data.faces.size and (data.faces.min() < 0 or data.faces.max() >= len(data.coords)):
        raise ValueError(
            f"{path}: triangle vertex indices span [{data.faces.min()}, {data.faces.max()}] "
            f"but the file has {len(data.coords)} points"
        )
    return data


def _format_comments(comments: dict) -> str:
    return "".join(f"# {key} = {value}\n" for key, value in comments.items())


def write_rec(path, coords, faces, labels, comments: dict | None = None, *, binary: bool = False) -> None:
    """Write a ``.rec`` file atomically (coordinates written as given, no conversion).

    Parameters
    ----------
    path : str or os.PathLike
    coords : (N, 3) float array
    faces : (M, 3) int array
    labels : (M, 2) int array
    comments : dict, optional
        Written as trailing ``# key = value`` lines (also after binary data).
    binary : bool
        Binary layout instead of text. Text coordinates use the shortest decimal form that
        reads back to the same float64, so both layouts round-trip exactly.
    """
    coords = np.asarray(coords, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int32)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape (N, 3), got {coords.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or labels.shape != (len(faces), 2):
        raise ValueError(f"faces must be (M, 3) and labels (M, 2), got {faces.shape} and {labels.shape}")
    tail = _format_comments(comments or {})
    if binary:
        rec = np.empty(len(faces), dtype=_RECORD)
        rec["faces"] = faces
        rec["labels"] = labels
        with atomic_write(path, "wb") as fh:
            fh.write(np.uint64(len(coords)).astype("<u8").tobytes())
            fh.write(np.ascontiguousarray(coords, dtype="<f8").tobytes())
            fh.write(np.uint64(len(faces)).astype("<u8").tobytes())
            fh.write(rec.tobytes())
            fh.write(tail.encode("utf-8"))
        return
    # repr() of a Python float is the shortest string that parses back to the same double.
    vert_text = "\n".join(" ".join(map(repr, row)) for row in coords.tolist())
    records = np.concatenate([faces, labels.astype(np.int64)], axis=1)
    face_text = "\n".join(" ".join(map(str, row)) for row in records.tolist())
    with atomic_write(path, "w") as fh:
        fh.write(f"{len(coords)}\n")
        if len(coords):
            fh.write(vert_text + "\n")
        fh.write(f"{len(faces)}\n")
        if len(faces):
            fh.write(face_text + "\n")
        fh.write(tail)
