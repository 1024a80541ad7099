"""``deltamic mechanics``: curvatures, contact angles, tensions and pressures of a labelled
mesh, written to an outputs directory (see :func:`deltamic_core.geometry.mechanics.mechanics`)."""

from __future__ import annotations

import time

from .errors import InputError, one_line
from .inputs import _check_mesh, _existing_file, read_mesh_file


def read_mechanics_mesh(path, spacing_um=None, mesh_units=None):
    """The mesh to analyse: with ``spacing_um`` or ``mesh_units`` as :func:`read_mesh_file`
    reads it (1 um voxels by default), else in um as written (a .rec also without scaling)."""
    if spacing_um is not None or mesh_units is not None:
        return read_mesh_file(path, tuple(spacing_um or (1.0, 1.0, 1.0)), mesh_units, what="MESH")
    if not str(path).lower().endswith(".rec"):
        return read_mesh_file(path, None, "um", what="MESH")
    from .. import io as dio

    p = _existing_file(path, "MESH")
    try:
        mesh = dio.read_mesh(p)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
        raise InputError(f"MESH {str(p)!r} cannot be read as a mesh ({one_line(exc)})") from None
    _check_mesh(mesh, f"MESH {str(p)!r}")
    return mesh


def _known_tensions(tensions) -> dict:
    known = {}
    for a, b, value in tensions or ():
        try:
            known[(int(a), int(b))] = float(value)
        except ValueError:
            raise InputError(f"--tension {a} {b} {value}: expected two region labels and a number") from None
    return known


def mechanics_to_directory(
    mesh_path, out, *, spacing_um=None, mesh_units=None, tensions=(), fix_tension=None, command=None
):
    """Analyse the mesh at ``mesh_path`` and write the mechanics outputs to the directory ``out``
    (replaced only if deltamic wrote it). ``tensions``: (A, B, value) triples of measured
    tensions (strings or numbers); ``fix_tension``: (A, B) whose interface gets tension 1
    (default: mean tension 1). Returns (result, seconds, output directory)."""
    from ..geometry.mechanics import mechanics
    from .outputs import REPORT_NAME, check_replaceable, staged_directory, versions, write_json, write_mechanics_outputs

    out = check_replaceable(out)
    mesh = read_mechanics_mesh(mesh_path, spacing_um, mesh_units)
    known = _known_tensions(tensions)
    normalise = "mean" if fix_tension is None else tuple(fix_tension)
    try:
        t0 = time.perf_counter()
        result = mechanics(mesh, normalise=normalise, known_tensions=known or None)
        elapsed = time.perf_counter() - t0
    except ValueError as exc:
        raise InputError(f"MESH {str(mesh_path)!r}: {one_line(exc)}") from None
    with staged_directory(out) as tmp:
        summary = write_mechanics_outputs(tmp, mesh, result)
        report = {"command": command, "input": str(mesh_path), "mechanics": summary, "time_s": elapsed}
        write_json(tmp / REPORT_NAME, {**report, "versions": versions()})
    return result, elapsed, out


__all__ = ["mechanics_to_directory", "read_mechanics_mesh"]
