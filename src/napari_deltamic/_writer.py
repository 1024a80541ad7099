"""napari writer: a Surface layer -> .obj / .ply / .rec (atomic, through deltamic_core.io)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._layers import surface_data_to_mesh

MESH_WRITE_SUFFIXES = (".obj", ".ply", ".rec")


def write_surface(path: str, data, meta: dict) -> list[str]:
    """Write one Surface layer's mesh to ``path``.

    Vertices are written in world coordinates (data * scale + translate), i.e. um for layers
    made by this plugin. Per-face cell labels stored in ``meta["metadata"]["labels"]`` are kept (written to
    .rec; other formats store the geometry only, as the core's writer decides).

    Returns
    -------
    list of str
        The paths written (napari's writer contract).
    """
    from deltamic_core.io import write_mesh

    suffix = Path(path).suffix.lower()
    if suffix not in MESH_WRITE_SUFFIXES:
        raise ValueError(f"path must end with one of {MESH_WRITE_SUFFIXES}, got {path!r}")
    layer_meta = (meta or {}).get("metadata") or {}
    mesh = surface_data_to_mesh(data, layer_meta)
    # write world coordinates (um), as the user sees them, whatever the layer's transform
    scale = np.asarray((meta or {}).get("scale", (1.0, 1.0, 1.0)), dtype=np.float64)[-3:]
    translate = np.asarray((meta or {}).get("translate", (0.0, 0.0, 0.0)), dtype=np.float64)[-3:]
    if np.any(scale != 1.0) or np.any(translate != 0.0):
        mesh = mesh.copy(verts=mesh.verts * scale + translate)
    write_mesh(path, mesh)
    return [os.fspath(path)]
