"""Conversions between core objects (``deltamic_core.mesh.Mesh``, spacing) and napari layers.

World coordinates in napari are micrometres: an Image layer carries ``scale`` = voxel spacing
(um) and a Surface layer carries vertices already in um (scale 1), so both overlay without any
further transform. Per-face cell labels travel in the Surface layer's ``metadata["labels"]``;
the vertex values are cell ids so that each cell gets its own colour.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deltamic_core.mesh import Mesh

#: metadata keys the plugin reads and writes on Surface layers
LABELS_KEY = "labels"  # (F, 2) int32, the .rec (l1, l2) convention of deltamic_core.mesh
VOXEL_UNITS_KEY = "voxel_units"  # True: vertices are still in voxel units of the source stack
SPACING_KEY = "spacing_um"

#: the ``units`` of every (z, y, x) layer the plugin makes: world coordinates are micrometres
UNITS_ZYX = ("um", "um", "um")
#: the colormap of cell ids on Surface layers; Labels layers get the same colours per cell
CELL_COLORMAP = "turbo"


def units_for(ndim: int) -> tuple[str, ...]:
    """Layer ``units`` for an ``ndim`` layer: um on the last three axes, pixel (index) before."""
    return ("pixel",) * (ndim - 3) + UNITS_ZYX


def cell_colors(n_cells: int) -> dict[int, np.ndarray]:
    """RGBA per cell id 1..n: the colour the Surface layer (colormap :data:`CELL_COLORMAP`,
    contrast limits (0, n)) gives a vertex of that cell, so Labels can show the same colour."""
    from napari.utils.colormaps import ensure_colormap

    n = max(int(n_cells), 1)
    cmap = ensure_colormap(CELL_COLORMAP)
    ids = np.arange(1, n + 1)
    rgba = np.asarray(cmap.map(ids / float(n)), dtype=np.float32)
    return {int(i): rgba[k] for k, i in enumerate(ids)}


def labels_colormap(n_cells: int):
    """A napari DirectLabelColormap giving label i the Surface colour of cell i (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    colors.update(cell_colors(n_cells))
    return DirectLabelColormap(color_dict=colors)


def vertex_cell_ids(mesh: Mesh) -> np.ndarray:
    """Cell id per vertex, (V,) float32, for colouring a multi-cell mesh.

    A vertex on the outer boundary touches a single cell; a vertex on a shared membrane touches
    two or more, and takes the smallest id (any choice is arbitrary there). Unlabelled meshes
    are one cell (id 1).
    """
    ids = np.ones(len(mesh.verts), dtype=np.float32)
    if mesh.labels is None:
        return ids
    big = np.iinfo(np.int32).max
    lab = np.where(mesh.labels > 0, mesh.labels, big)
    per_face = lab.min(axis=1)
    out = np.full(len(mesh.verts), big, dtype=np.int64)
    for corner in range(3):
        np.minimum.at(out, mesh.faces[:, corner], per_face)
    out[out == big] = 0  # isolated vertices
    return out.astype(np.float32)


def surface_kwargs(mesh: Mesh, name: str, *, extra_metadata: dict | None = None) -> dict[str, Any]:
    """Layer keyword arguments for showing ``mesh`` as a Surface layer (vertices in um)."""
    metadata: dict[str, Any] = dict(mesh.metadata)
    if mesh.labels is not None:
        metadata[LABELS_KEY] = mesh.labels.copy()
    if extra_metadata:
        metadata.update(extra_metadata)
    n_cells = max(int(mesh.n_cells), 1)
    return {
        "name": name,
        "metadata": metadata,
        "colormap": CELL_COLORMAP,
        "units": UNITS_ZYX,
        # ids 1..n spread over the upper part of the map; 0 (unlabelled) is the dark end
        "contrast_limits": (0.0, float(n_cells)),
        "opacity": 0.7,
        "blending": "translucent",
    }


def mesh_to_layer_data(mesh: Mesh, name: str, *, extra_metadata: dict | None = None) -> tuple:
    """A napari ``LayerDataTuple`` for a Surface layer showing ``mesh``."""
    data = (mesh.verts.astype(np.float32), mesh.faces.astype(np.int64), vertex_cell_ids(mesh))
    return (data, surface_kwargs(mesh, name, extra_metadata=extra_metadata), "surface")


def labels_from_metadata(metadata: dict, n_faces: int) -> np.ndarray | None:
    """The (F, 2) face labels stored on a layer, or None if absent or out of date."""
    labels = metadata.get(LABELS_KEY) if metadata else None
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (n_faces, 2):
        return None  # the faces were edited after the labels were stored
    return labels.astype(np.int32)


def surface_data_to_mesh(data, metadata: dict | None = None) -> Mesh:
    """Rebuild a core ``Mesh`` from Surface layer data ``(verts, faces[, values])`` + metadata."""
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise ValueError("Surface data must be a tuple (vertices, faces[, values])")
    verts = np.asarray(data[0], dtype=np.float64)
    faces = np.asarray(data[1], dtype=np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"the Surface layer must be 3D (vertices (V, 3)), got vertices of shape {verts.shape}")
    meta = dict(metadata or {})
    labels = labels_from_metadata(meta, len(faces))
    meta.pop(LABELS_KEY, None)
    return Mesh(verts, faces, labels=labels, metadata=meta)


def layer_to_mesh(layer) -> Mesh:
    """The mesh of a Surface layer in world coordinates (um), whatever the layer's transform."""
    verts = np.asarray(layer.vertices, dtype=np.float64)
    if verts.shape[1] != 3:
        raise ValueError(f"Surface layer {layer.name!r} is {verts.shape[1]}D; a 3D surface (z, y, x) is needed")
    world = verts * np.asarray(layer.scale[-3:]) + np.asarray(layer.translate[-3:])
    return surface_data_to_mesh((world, layer.faces), layer.metadata)


def image_spacing(layer) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) in um of an Image/Labels layer: its last three scale factors."""
    if layer.ndim < 3:
        raise ValueError(f"layer {layer.name!r} is {layer.ndim}D; a 3D stack (z, y, x) is needed")
    return tuple(float(s) for s in layer.scale[-3:])


def image_origin(layer) -> tuple[float, float, float]:
    """World position (um) of voxel (0, 0, 0) of an Image/Labels layer."""
    return tuple(float(t) for t in layer.translate[-3:])


def labels_features(rows):
    """The measurements as a Labels ``features`` table: one row per label, its ``index`` the
    label value (0, the background, first with empty measurements)."""
    import pandas as pd

    from deltamic_core.pipeline.outputs import CELL_TABLE_COLUMNS

    table = pd.DataFrame([{k: r.get(k) for k in CELL_TABLE_COLUMNS} for r in rows], columns=list(CELL_TABLE_COLUMNS))
    table.insert(0, "index", [int(r["cell"]) for r in rows])
    if "cell" in table.columns:
        table = table.drop(columns="cell")
    background = pd.DataFrame({"index": [0]})
    table = pd.concat([background, table], ignore_index=True)
    return table
