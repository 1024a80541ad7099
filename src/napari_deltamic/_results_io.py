"""A fit's result folder (the layout of ``deltamic fit --out DIR``) written from and read into napari.

"Save all" writes what ``deltamic fit`` writes (``pipeline.outputs.write_fit_outputs`` in a
staging directory renamed into place with its manifest, ``io/outdir.py``'s rules: a new name,
an empty directory, or with overwrite only a result the tool wrote itself); "Open result" (and
``viewer.open(DIR)``, this plugin's directory reader) loads such a folder: the image named in
``report.json`` when it still exists, the label image as a Labels layer whose ``features`` are
the measurements, the mesh as a Surface layer, the report as the layers' metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ._layers import SPACING_KEY, UNITS_ZYX, labels_colormap, labels_features, mesh_to_layer_data

RESULT_KEY = "deltamic_result"  # layer metadata: the folder a layer was read from


def is_result_dir(path) -> bool:
    """True for a complete result folder of ours (report.json and a matching manifest)."""
    try:
        p = Path(path)
        if not p.is_dir():
            return False
        from deltamic_core.pipeline.outputs import is_complete

        return is_complete(p)
    except (OSError, ValueError):
        return False


def get_result_reader(path):
    """npe2 directory reader: a reader for a result folder of ours, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)) or not is_result_dir(path):
        return None
    return read_result_layers


def cell_rows(report: dict) -> list[dict]:
    """The widget's per-cell rows (measurements + contact area + neighbours) of a report."""
    cells = list(report.get("cells") or [])
    contacts = list(report.get("contacts") or [])
    rows = []
    for row in cells:
        c = int(row["cell"])
        shared = sorted(
            (int(k["cell_b"]) if int(k["cell_a"]) == c else int(k["cell_a"]), float(k["area_um2"]))
            for k in contacts
            if c in (int(k["cell_a"]), int(k["cell_b"]))
        )
        rows.append(
            {
                **row,
                "contact_area_um2": float(sum(a for _, a in shared)),
                "contacts": " ".join(f"{o}:{a:.3g}" for o, a in shared),
            }
        )
    return rows


def read_result_layers(path) -> list[tuple]:
    """Layer data tuples of a result folder: [image (if its file exists)], labels, surface."""
    from deltamic_core.io import read_image, read_mesh

    from ._reader import read_image_layer

    if isinstance(path, (list, tuple)):
        path = path[0]
    d = Path(path)
    report = json.loads((d / "report.json").read_text())
    spacing = tuple(float(s) for s in (report.get("image") or {}).get("spacing_um") or (1.0, 1.0, 1.0))
    origin = tuple(float(o) for o in report.get("origin_um") or (0.0, 0.0, 0.0))
    meta = {RESULT_KEY: os.fspath(d), "report": report, SPACING_KEY: spacing}
    out: list[tuple] = []
    source = report.get("input")
    if isinstance(source, str) and Path(source).is_file():
        try:
            out.extend(read_image_layer(source))
        except (OSError, ValueError):
            pass  # the image moved or changed: the result still opens
    labels, _ = read_image(d / "labels.tif")
    labels = np.asarray(labels).astype(np.int32)
    rows = cell_rows(report)
    n = max([int(r["cell"]) for r in rows] + [int(labels.max())])
    out.append(
        (
            labels,
            {
                "name": f"{d.name} cells",
                "scale": spacing,
                "translate": origin,
                "units": UNITS_ZYX,
                "features": labels_features(rows),
                "colormap": labels_colormap(n),
                "metadata": meta,
            },
            "labels",
        )
    )
    mesh = read_mesh(d / "mesh.rec")
    data, kwargs, kind = mesh_to_layer_data(mesh, f"{d.name} fit", extra_metadata={**meta, "voxel_units": False})
    out.append((data, kwargs, kind))
    return out
