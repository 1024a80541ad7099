"""Writing a fit's outputs directory, all-or-nothing.

A fit (from the command line, a batch task or a time-lapse frame) produces one directory::

    DIR/mesh.rec           the fitted multi-material mesh, um in the image frame (``# units = um``)
    DIR/mesh.ply           the same mesh in micrometres, (z, y, x) columns
    DIR/labels.tif         int32 (Z, Y, X): cells 1..n in seed order, 0 outside
    DIR/measurements.csv   one row per cell: volume, area, sphericity, centroid
    DIR/contacts.csv       one row per pair of touching cells: shared area
    DIR/report.json        loss history, timings, PSF parameters, versions, command line

and, with the mechanics analysis (:func:`write_mechanics_outputs`)::

    DIR/mechanics.csv      one row per interface: curvature, relative tension, pressures, residuals
    DIR/junctions.csv      one row per triple line: contact angle of each of its three regions
    DIR/curvature.csv      one row per (vertex, interface): mean and Gaussian curvature
    DIR/mesh.ply           then carries vertex properties mean_curvature, gaussian_curvature

Everything is written into a hidden sibling directory first and renamed into place at the end
(:func:`staged_directory`) with a manifest of every file (:mod:`deltamic_core.io.outdir`): a
directory that holds a ``report.json`` and a matching manifest is complete (what batch and
time-lapse runs test to resume), and only such a directory is ever replaced.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import os
import platform
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..mesh import Mesh

REPORT_NAME = "report.json"
ERROR_NAME = "error.txt"


def is_complete(out_dir: str | os.PathLike) -> bool:
    """True if ``out_dir`` holds the final output of a finished run: its ``report.json`` and a
    manifest that matches its contents (nothing changed since the tool wrote it)."""
    from ..io.outdir import is_ours

    return (Path(out_dir) / REPORT_NAME).is_file() and is_ours(out_dir)


def check_replaceable(
    out_dir: str | os.PathLike, name: str = "--out", *, overwrite: bool = False, inputs=(), resume: bool = False
) -> Path:
    """Validate an output directory before any work (see :func:`deltamic_core.io.outdir.check_output_dir`).

    A new name, an empty directory, or (with ``overwrite``, the CLI's ``--overwrite``) a
    directory whose manifest proves the tool wrote exactly what it holds; never a directory
    with anything else in it, never one that holds an input. ``resume``: a batch/time-lapse
    root of ours is accepted as it is. Raises :class:`~deltamic_core.pipeline.errors.InputError`.
    """
    from ..io.outdir import OutputError, check_output_dir

    try:
        return check_output_dir(out_dir, overwrite=overwrite, inputs=inputs, option=name, resume=resume)
    except OutputError as exc:
        from .errors import InputError

        raise InputError(str(exc)) from None


@contextlib.contextmanager
def staged_directory(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory that becomes ``out_dir`` (with its manifest) on success.

    On an exception the staging directory is removed and ``out_dir`` is left as it was. An
    existing ``out_dir`` is swapped out atomically, and only when it is empty or (with
    ``overwrite``) provably ours; the location must have been checked with
    :func:`check_replaceable` before the work started.
    """
    from ..io.outdir import OutputError, staged_output

    try:
        with staged_output(out_dir, overwrite=overwrite, checked=True) as tmp:
            yield tmp
    except OutputError as exc:
        from .errors import FitFailedError

        raise FitFailedError(str(exc)) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary name and ``os.replace``."""
    from ..io import atomic_write

    with atomic_write(path, "w") as fh:
        fh.write(text)


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Rows of dicts -> CSV text with a header, floats at full precision."""
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _plain(v) for k, v in row.items()})
    return buf.getvalue()


def json_text(obj) -> str:
    return json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n"


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """Rows of dicts -> CSV with a header, floats at full precision, atomically."""
    atomic_write_text(path, csv_text(rows, columns))


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json_text(obj))


def _plain(v):
    """numpy/torch scalars and arrays -> JSON/CSV-friendly Python values (NaN -> None)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "detach"):  # torch tensor
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def versions() -> dict:
    """Versions of the pieces that determine a result (for report.json)."""
    import numpy
    import scipy
    import torch

    from .._version import __version__

    out = {
        "deltamic": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
    }
    for mod in ("finufft", "tifffile", "dask", "distributed"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = m.__version__
    return out


MEASUREMENT_COLUMNS = (
    "cell",
    "volume_um3",
    "area_um2",
    "sphericity",
    "centroid_z_um",
    "centroid_y_um",
    "centroid_x_um",
)
CONTACT_COLUMNS = ("cell_a", "cell_b", "area_um2")


def write_fit_outputs(
    out_dir: str | os.PathLike,
    mesh: Mesh,
    *,
    shape: Sequence[int],
    spacing_um: Sequence[float],
    report: Mapping,
    origin_um=(0.0, 0.0, 0.0),
    measurements: Sequence[Mapping] | None = None,
    contacts: Sequence[Mapping] | None = None,
    labels: np.ndarray | None = None,
    mechanics: bool = False,
) -> dict:
    """Write the files of one fit into an existing (staging) directory; ``report.json`` last.

    Parameters
    ----------
    out_dir : path
        Directory to write into (normally the one yielded by :func:`staged_directory`).
    mesh : Mesh
        Fitted mesh, vertices in um in the image frame, (z, y, x) columns.
    shape, spacing_um, origin_um
        The image grid (Z, Y, X) voxels, voxel size in um, centre of voxel (0, 0, 0) in um.
    report : mapping
        Everything for ``report.json``; the per-cell table is added under ``"cells"``.
    measurements, contacts : sequences of dicts, optional
        Per-cell rows (keys of :data:`MEASUREMENT_COLUMNS`) and per-contact rows; computed
        with :func:`deltamic_core.geometry.measure` when not given.
    labels : (Z, Y, X) int array, optional
        Label image; rasterised from the mesh when not given.
    mechanics : bool
        Also write the mechanics analysis (:func:`write_mechanics_outputs`; its summary goes
        into the report under ``"mechanics"``).

    Returns
    -------
    dict
        The report as written.
    """
    import time

    from .. import io as dio

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dio.write_mesh(out / "mesh.rec", mesh)  # um in the image frame, '# units = um' (as every mesh we write)
    dio.write_mesh(out / "mesh.ply", mesh)
    if labels is None:
        from ..geometry import label_image

        labels = label_image(mesh, tuple(shape), tuple(spacing_um), tuple(origin_um))
    dio.write_tiff(out / "labels.tif", np.asarray(labels, dtype=np.int32), tuple(spacing_um))
    if measurements is None or contacts is None:
        m_rows, c_rows = measurement_rows(mesh)
        measurements = m_rows if measurements is None else measurements
        contacts = c_rows if contacts is None else contacts
    write_csv(out / "measurements.csv", measurements, MEASUREMENT_COLUMNS)
    write_csv(out / "contacts.csv", contacts, CONTACT_COLUMNS)
    full = dict(report)
    if mechanics:
        full["mechanics"] = write_mechanics_outputs(out, mesh)
    if isinstance(full.get("timings"), Mapping):
        full["timings"] = {**full["timings"], "outputs_s": time.perf_counter() - t0}
    full.setdefault("cells", list(measurements))
    full.setdefault("contacts", list(contacts))
    full.setdefault("files", sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) + [REPORT_NAME])
    write_json(out / REPORT_NAME, full)
    return full


def measurement_rows(mesh: Mesh) -> tuple[list[dict], list[dict]]:
    """Per-cell rows (:data:`MEASUREMENT_COLUMNS`) and per-contact rows (:data:`CONTACT_COLUMNS`)
    of :func:`deltamic_core.geometry.measure`."""
    from .. import geometry

    table = geometry.measure(mesh)
    cells = [{k: row[k] for k in MEASUREMENT_COLUMNS} for row in table.rows()]
    c = table.contacts
    contacts = [
        {"cell_a": int(a), "cell_b": int(b), "area_um2": float(area)}
        for a, b, area in zip(c["cell_a"], c["cell_b"], c["area_um2"])
    ]
    return cells, contacts


CELL_TABLE_COLUMNS = MEASUREMENT_COLUMNS + ("contact_area_um2", "contacts")


def cell_table(mesh: Mesh) -> list[dict]:
    """One row per cell (:data:`CELL_TABLE_COLUMNS`): the measurements plus the total area shared
    with other cells and the neighbours as ``"cell:area ..."`` (the widget's table)."""
    cells, contacts = measurement_rows(mesh)
    rows = []
    for row in cells:
        shared = sorted(
            (c["cell_b"] if c["cell_a"] == row["cell"] else c["cell_a"], c["area_um2"])
            for c in contacts
            if row["cell"] in (c["cell_a"], c["cell_b"])
        )
        rows.append(
            {
                **row,
                "contact_area_um2": float(sum(a for _, a in shared)),
                "contacts": " ".join(f"{other}:{area:.3g}" for other, area in shared),
            }
        )
    return rows


def write_mechanics_outputs(out_dir: str | os.PathLike, mesh: Mesh, result=None, **options) -> dict:
    """Write mechanics.csv, junctions.csv, curvature.csv and mesh.ply with curvature properties.

    ``result`` is a :class:`deltamic_core.geometry.mechanics.MechanicsResult` of ``mesh``
    (computed with ``options`` passed to :func:`~deltamic_core.geometry.mechanics.mechanics`
    when not given). Vertex indices in curvature.csv are those of mesh.ply. Returns a summary
    for report.json (per-cell pressures, residuals, units and conventions).
    """
    from .. import io as dio
    from ..geometry.mechanics import CURVATURE_COLUMNS, INTERFACE_COLUMNS, JUNCTION_COLUMNS, mechanics

    if result is None:
        result = mechanics(mesh, **options)
    out = Path(out_dir)
    write_csv(out / "mechanics.csv", result.rows("interfaces"), INTERFACE_COLUMNS)
    write_csv(out / "junctions.csv", result.rows("junctions"), JUNCTION_COLUMNS)
    write_csv(out / "curvature.csv", result.rows("curvature"), CURVATURE_COLUMNS)
    dio.write_mesh(
        out / "mesh.ply",
        mesh,
        vertex_properties={
            "mean_curvature": np.nan_to_num(result.vertex_mean_curvature),
            "gaussian_curvature": np.nan_to_num(result.vertex_gaussian_curvature),
        },
    )
    return {
        "conventions": "interface (a, b), a < b: normal from b into a; mean curvature H > 0 when it bulges "
        "into a; Laplace p_b - p_a = 2 tension H; tensions relative (mean 1 per connected "
        "group unless fixed), pressures in tension units per um, medium (0) at 0",
        "force_residual_rms": result.residual_rms,
        "n_triple_points": int(len(result.points["vertex"])),
        "pressures": {int(c): float(p) for c, p in zip(result.cells["cell"], result.cells["pressure"])},
        "tensions": [
            {"cell_a": int(a), "cell_b": int(b), "tension": float(t)}
            for a, b, t in zip(result.interfaces["cell_a"], result.interfaces["cell_b"], result.interfaces["tension"])
        ],
    }
