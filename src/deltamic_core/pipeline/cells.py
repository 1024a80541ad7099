"""Work on single cells of a mesh: refit one alone (its neighbours frozen), or add and remove
cells while a fit runs.

:func:`refit_cell` reuses the per-object crops of :mod:`.objects`: the crop holds the cell's
box grown by a margin (room to move, plus the PSF's reach) and the neighbours whose grown boxes
overlap it, whole. Those cells are fitted together in the crop by an ordinary
:class:`~deltamic_core.fit.Fitter`, but every vertex that is not on the chosen cell is frozen
(``Fitter(frozen=)``): the neighbours render (their light is modelled) and do not move; the
membranes the cell shares with them move with the cell, so the mesh keeps its topology and its
shared membranes. The voxels nearer to a cell left out of the crop get weight 0
(:func:`.objects.ownership_weight`). The topology is fixed during the refit (no remeshing, no
membrane rebuild); the fitted vertices are written back into the whole mesh.

:func:`change_cells` adds seed spheres as new cells and removes cells (``geometry.edit``), every
other vertex kept exactly; :class:`CellChange` is one such request posted to a running fit
(``holder["changes"]`` of :func:`~deltamic_core.pipeline.fit_steps`, a thread-safe queue), and
:func:`apply_changes` applies the pending ones between two steps with ``Fitter.set_mesh``: the
other cells go on from where they are, with their optimiser state.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time

import numpy as np

from .errors import InputError

__all__ = ["refit_cell", "change_cells", "cells_at", "CellChange", "apply_changes", "changes_queue"]


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


def cells_at(mesh, points) -> np.ndarray:
    """The cell id containing each point (0: none), by the winding number of each cell's surface."""
    from gpytoolbox import winding_number

    from ..geometry import cell_surface
    from ..geometry.ops import face_labels

    out = np.zeros(len(points), dtype=np.int64)
    for c in (int(c) for c in np.unique(face_labels(mesh)) if c > 0):
        s = cell_surface(mesh, c)
        inside = np.abs(winding_number(points, s.verts, s.faces.astype(np.int64))) > 0.5
        out[inside & (out == 0)] = c
    return out


def change_cells(mesh, *, add=None, remove=(), spacing_um, edge_um=None, bounds_um=None):
    """``mesh`` with the cells ``remove`` deleted and a seed sphere per ``add`` as new cells.

    ``add``: ``(centres (n, 3) um, radii (n,) um)``; a new sphere is shrunk so that it stays
    clear of the cells (0.9 x its distance to their surfaces) and of the other new spheres, and
    refused when its centre is inside a cell, outside ``bounds_um`` ``((z0, y0, x0), (z1, y1,
    x1))``, or when its radius would be below a voxel. Removed cells go as ``geometry.edit
    .delete_cell`` does it (a membrane shared with a neighbour stays as its outer face); the
    other cells are renumbered 1..n in order, new ones follow. ``edge_um``: the new spheres'
    triangle size (default: the mesh's mean edge).

    Returns ``(new_mesh, source, added, notes)``: ``source[i]`` the index in ``mesh`` of vertex i
    of the new mesh (-1 for a new sphere's vertex; every kept vertex is bitwise unchanged), the
    new cell id of each accepted ``add`` (None where refused), and what was refused, in words.
    """
    from ..geometry import seed_spheres
    from ..geometry.edit import delete_cell
    from ..geometry.ops import edge_lengths, face_labels
    from ..geometry.validate import shrink_overlapping_seeds
    from ..mesh import Mesh

    labels = face_labels(mesh)
    ids = [int(c) for c in np.unique(labels) if c > 0]
    remove = sorted({int(c) for c in remove}, reverse=True)  # high ids first: the lower stay valid
    for c in remove:
        if c not in ids:
            raise InputError(f"cell {c} is not a cell of the mesh (cells: {ids})")
    # the edit runs on vertex indices written as coordinates: it never reads them, so the kept
    # vertices' indices come out in order
    tracked = mesh.copy(verts=np.repeat(np.arange(len(mesh.verts), dtype=np.float64)[:, None], 3, axis=1))
    tracked = tracked if tracked.labels is not None else tracked.copy(labels=labels.copy())
    for c in remove:
        tracked = delete_cell(tracked, c)
    source = tracked.verts[:, 0].astype(np.int64)
    out = Mesh(mesh.verts[source], tracked.faces, tracked.labels, dict(mesh.metadata))
    notes: list[str] = []
    if add is None or len(add[0]) == 0:
        return out, source, [], notes
    centres = np.asarray(add[0], dtype=np.float64).reshape(-1, 3)
    radii = np.broadcast_to(np.asarray(add[1], dtype=np.float64), (len(centres),)).copy()
    vox = float(np.min(spacing_um))
    ok = np.isfinite(centres).all(axis=1) & np.isfinite(radii) & (radii > 0)
    if bounds_um is not None:
        lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds_um)
        ok &= ((centres >= lo) & (centres <= hi)).all(axis=1)
    within = cells_at(out, centres)
    from gpytoolbox import squared_distance

    dist = np.sqrt(squared_distance(centres, out.verts, out.faces.astype(np.int64), use_cpp=True)[0])
    radii = np.minimum(radii, 0.9 * dist)
    radii[ok] = shrink_overlapping_seeds(centres[ok], radii[ok])[0]
    added: list = []
    accepted = []
    for i, c in enumerate(centres):
        where = f"seed at (z, y, x) = ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}) um"
        if not ok[i]:
            notes.append(f"{where} refused: outside the image")
        elif within[i]:
            notes.append(f"{where} refused: it is inside cell {int(within[i])}")
        elif not radii[i] >= vox:
            notes.append(
                f"{where} refused: its sphere would have radius {radii[i]:.2f} um, smaller than a voxel "
                f"({vox:.3g} um): too close to a cell"
            )
        else:
            accepted.append(i)
            added.append(len(ids) - len(remove) + len(accepted))
            continue
        added.append(None)
    if not accepted:
        return out, source, added, notes
    edge = float(np.mean(edge_lengths(out.verts, out.faces))) if edge_um is None else float(edge_um)
    spheres = seed_spheres(centres[accepted], radii[accepted], edge_um=edge)
    n_old = len(ids) - len(remove)
    new_labels = np.where(spheres.labels > 0, spheres.labels + n_old, 0).astype(np.int32)
    out = Mesh(
        np.concatenate([out.verts, spheres.verts]),
        np.concatenate([out.faces, spheres.faces + len(out.verts)]),
        np.concatenate([out.labels, new_labels]),
        out.metadata,
    )
    source = np.concatenate([source, np.full(len(spheres.verts), -1, dtype=np.int64)])
    return out, source, added, notes


@dataclasses.dataclass
class CellChange:
    """A request to a running fit: remove cells, add seed spheres (see :func:`change_cells`).

    Posted by another thread into ``holder["changes"]``; the fit's thread fills ``added``
    (new cell id per seed, None where refused), ``notes`` and ``error`` and sets ``done``."""

    add_centres: np.ndarray = dataclasses.field(default_factory=lambda: np.empty((0, 3)))
    add_radii: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    remove: tuple = ()
    added: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    error: str | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


def changes_queue(holder: dict):
    """The thread-safe mailbox of cell changes in a fit's ``holder`` (made on first use)."""
    return holder.setdefault("changes", queue.SimpleQueue())


def apply_changes(fitter, changes) -> int:
    """Apply every :class:`CellChange` waiting in the queue ``changes`` to ``fitter`` (between two
    steps, on the fit's thread); a change that fails is refused whole (``error``), the fit goes
    on. Returns the number applied."""
    from ..geometry.ops import face_labels

    n = 0
    while True:
        try:
            change = changes.get_nowait()
        except queue.Empty:
            return n
        try:
            mesh = fitter.current_mesh()
            spacing = fitter.spacing_um
            shape = fitter.image_shape
            lo = np.asarray(fitter.origin_um)
            hi = lo + (np.asarray(shape) - 1) * np.asarray(spacing)
            new, source, added, notes = change_cells(
                mesh,
                add=(change.add_centres, change.add_radii),
                remove=change.remove,
                spacing_um=spacing,
                bounds_um=(lo, hi),
            )
            if not any(c > 0 for c in np.unique(face_labels(new))):
                raise InputError("no cell would be left")
            if len(change.remove) or any(a is not None for a in added):
                fitter.set_mesh(new, source)
            change.added, change.notes = added, notes
            n += 1
        except Exception as exc:  # noqa: BLE001 - said to the requester; the fit goes on
            change.error = str(exc) or type(exc).__name__
        finally:
            change.done.set()
