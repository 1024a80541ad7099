"""Work on one cell of a fitted mesh: refit it alone, in a crop around it, its neighbours frozen.

:func:`refit_cell` reuses the per-object crops of :mod:`.objects`: the crop holds the cell's
box grown by a margin (room to move, plus the PSF's reach) and the neighbours whose grown boxes
overlap it, whole. Those cells are fitted together in the crop by an ordinary
:class:`~deltamic_core.fit.Fitter`, but every vertex that is not on the chosen cell is frozen
(``Fitter(frozen=)``): the neighbours render (their light is modelled) and do not move; the
membranes the cell shares with them move with the cell, so the mesh keeps its topology and its
shared membranes. The voxels nearer to a cell left out of the crop get weight 0
(:func:`.objects.ownership_weight`). The topology is fixed during the refit (no remeshing, no
membrane rebuild); the fitted vertices are written back into the whole mesh.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .errors import InputError

__all__ = ["refit_cell"]


def refit_cell(
    image,
    spacing_um,
    mesh,
    cell: int,
    psf,
    config=None,
    *,
    origin_um=(0.0, 0.0, 0.0),
    margin_um: float | None = None,
    callback=None,
):
    """Refit ``cell`` of ``mesh`` (um, image frame) to ``image`` with every other vertex frozen.

    ``config``: a :class:`~deltamic_core.fit.FitConfig` (its remeshing and membrane rebuild are
    turned off for the refit); ``margin_um`` as in :func:`.objects.plan_object_crops`;
    ``callback(step_result)`` after each step (return False to stop early).

    Returns ``(new_mesh, info)``: the whole mesh with the cell's vertices refitted (same faces
    and labels; every other vertex bitwise unchanged) and a dict with the crop's ``shape``,
    ``origin_um``, the ``cells`` in it, ``iterations``, the final ``loss`` and ``wall_s``.
    """
    from ..fit import FitConfig, Fitter
    from ..geometry.ops import face_labels
    from .objects import _cell_boxes, ownership_weight, plan_object_crops
    from .psfspec import psf_width_um

    img = np.asarray(image)
    if img.ndim != 3:
        raise InputError(f"the image must be one (Z, Y, X) stack, got shape {img.shape}")
    labels = face_labels(mesh)
    ids = [int(c) for c in np.unique(labels) if c > 0]
    if isinstance(cell, bool) or int(cell) not in ids:
        raise InputError(f"cell {cell!r} is not a cell of the mesh (cells: {ids})")
    cell = int(cell)
    config = FitConfig() if config is None else config
    config = dataclasses.replace(config, target_edge_um=None, remesh_every=0, share_membranes=False)
    reach = 3.0 * np.asarray(psf_width_um(psf), dtype=float)
    lab_mesh = mesh if mesh.labels is not None else mesh.copy(labels=labels)
    [crop] = [
        c for c in plan_object_crops(lab_mesh, img.shape, spacing_um, origin_um, margin_um, reach) if c.cell == cell
    ]
    # the crop's cells, whole: every face bounding one of them (a face it shares with a cell
    # outside the crop too), renumbered onto their own vertices
    keep = np.isin(labels, crop.cells).any(axis=1)
    used = np.unique(mesh.faces[keep])
    local = np.full(len(mesh.verts), -1, dtype=np.int64)
    local[used] = np.arange(len(used))
    from ..mesh import Mesh

    sub = Mesh(mesh.verts[used], local[mesh.faces[keep]], labels[keep])
    moving = np.zeros(len(used), dtype=bool)
    moving[np.unique(sub.faces[(sub.labels == cell).any(axis=1)])] = True
    weight = ownership_weight(crop, _cell_boxes(lab_mesh), spacing_um)
    t0 = time.perf_counter()
    fitter = Fitter(
        img[crop.slices], spacing_um, sub, psf, config, origin_um=crop.origin_um, voxel_weight=weight, frozen=~moving
    )
    result = fitter.run(None, callback)
    out = mesh.copy()
    fitted = result.mesh.verts
    out.verts[used[moving]] = fitted[moving]
    info = {
        "cell": cell,
        "shape": list(crop.shape),
        "origin_um": [float(o) for o in crop.origin_um],
        "cells": [int(c) for c in crop.cells],
        "iterations": int(result.iterations),
        "loss": float(result.loss_history[-1]) if result.loss_history else float("nan"),
        "wall_s": time.perf_counter() - t0,
    }
    return out, info
