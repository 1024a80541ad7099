"""Writing a fit's outputs directory, all-or-nothing.

A fit (from the command line, a batch task or a time-lapse frame) produces one directory::

    DIR/mesh.rec           the fitted multi-material mesh, voxel units (the .rec convention)
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
(:func:`staged_directory`), with ``report.json`` written last: a directory that holds a
``report.json`` is complete, which is what batch and time-lapse runs test to resume.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import os
import platform
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..mesh import Mesh

REPORT_NAME = "report.json"
ERROR_NAME = "error.txt"
# Files a deltamic run may leave in a directory: an existing directory holding only these (or
# nothing) may be replaced; anything else belongs to the user and is never deleted.
_OWN_FILES = {
    "mesh.rec",
    "mesh.ply",
    "labels.tif",
    "measurements.csv",
    "contacts.csv",
    REPORT_NAME,
    ERROR_NAME,
    "image.tif",
    "target.ply",
    "tracks.csv",
    "summary.csv",
    "mechanics.csv",
    "junctions.csv",
    "curvature.csv",
}


def is_complete(out_dir: str | os.PathLike) -> bool:
    """True if ``out_dir`` holds the final output of a finished run (its ``report.json``)."""
    return (Path(out_dir) / REPORT_NAME).is_file()


def check_replaceable(out_dir: str | os.PathLike, name: str = "--out") -> Path:
    """Refuse an output path that exists and is not a deltamic output directory.

    An existing directory is replaced only when it is empty or looks like our own output
    (its files are ones a deltamic run writes, plus ``tNNNN``/item sub-directories of such), so
    a typo in ``--out`` can never wipe a user's data.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {str(out)!r} exists and is a file, not a directory")
    if out.is_dir() and not _looks_like_ours(out):
        raise ValueError(
            f"{name} {str(out)!r} exists and does not look like a deltamic output directory: "
            "choose a new or empty directory"
        )
    parent = out.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{name}: parent directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{name}: parent directory {str(parent)!r} is not writable")
    return out


def _looks_like_ours(path: Path, depth: int = 0) -> bool:
    for child in path.iterdir():
        if child.is_dir():
            if depth >= 2 or not _looks_like_ours(child, depth + 1):
                return False
        elif child.name not in _OWN_FILES:
            return False
    return True


@contextlib.contextmanager
def staged_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``out_dir`` when the block succeeds.

    On an exception the temporary directory is removed and ``out_dir`` is left as it was. An
    existing ``out_dir`` is replaced (moved aside, then deleted once the new one is in place),
    so readers never see a half-written directory under the final name.
    """
    out = Path(out_dir)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.with_name(f".{out.name}.partial-{tag}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tag}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary name and ``os.replace``."""
    from ..io import atomic_write

    with atomic_write(path, "w") as fh:
        fh.write(text)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """Rows of dicts -> CSV with a header, floats at full precision, atomically."""
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _plain(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")


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

    from .. import __version__

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
    dio.write_mesh(out / "mesh.rec", mesh, spacing_um=tuple(spacing_um))
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
