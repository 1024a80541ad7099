"""Isotropic remeshing of single- and multi-cell meshes (Botsch-Kobbelt, via gpytoolbox).

A multi-cell mesh is cut into interface patches, one per unordered label pair (the outer
membrane of each cell, and each membrane shared by two cells). Each patch is remeshed on its
own with its boundary (the junction lines where three regions meet) held fixed, so the patches
still share exactly the same junction vertices and edges afterwards and the result is stitched
back without cracks: shared membranes stay shared. Separate closed cells (e.g. seeds) have no
boundary and are remeshed freely.

Junction lines are resampled beforehand on the whole mesh (long junction edges split, short
ones collapsed, see :mod:`deltamic_core.geometry._junctions`), so they approach the target
edge length too; their vertices are otherwise not moved (no smoothing along the junction).
Since the remesher cannot collapse edges ending on the fixed junctions, crowded fans of thin
triangles around junction vertices are relieved afterwards by collapsing free vertices into
them (same safety checks).

gpytoolbox's C++ remesher can crash the interpreter on inconsistent input (we observed
segmentation faults on patches with inconsistently wound faces), so every patch is checked
(consistent winding, manifold edges, no degenerate triangles) and repaired or left as it is,
with a warning, before it reaches the native code.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from .._cancel import checkpoint
from ..mesh import Mesh
from ._junctions import relieve_junction_fans as _relieve_junction_fans
from ._junctions import resample_junctions as _resample_junctions
from .ops import (
    _face_face_manifold_pairs,
    edge_counts,
    edges,
    face_areas,
    face_normals,
    min_angles,
    offset_to_volume,
    orient_outward,
    signed_volume,
    volumes_by_label,
)

__all__ = ["remesh", "triangle_quality"]


def triangle_quality(mesh: Mesh) -> dict:
    """Summary of triangle shape: min/mean of the smallest angle (degrees) and edge lengths."""
    ang = min_angles(mesh.verts, mesh.faces)
    e = edges(mesh.faces)
    lengths = np.linalg.norm(mesh.verts[e[:, 0]] - mesh.verts[e[:, 1]], axis=1)
    return {
        "min_angle_deg": float(ang.min()),
        "mean_min_angle_deg": float(ang.mean()),
        "p01_min_angle_deg": float(np.percentile(ang, 1)),
        "mean_edge_um": float(lengths.mean()),
        "n_faces": int(len(mesh.faces)),
    }


def _boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Undirected edges used by exactly one face, (B, 2) sorted rows."""
    uniq, counts = edge_counts(faces)
    return uniq[counts == 1]


def _nonmanifold_vertices(faces: np.ndarray, n_verts: int) -> np.ndarray:
    """Vertices on an edge with more than two faces, or whose faces do not form one fan."""
    uniq, counts = edge_counts(faces)
    bad = np.zeros(n_verts, dtype=bool)
    bad[uniq[counts > 2].reshape(-1)] = True
    n_faces = np.bincount(faces.reshape(-1), minlength=n_verts)
    n_edges = np.bincount(uniq.reshape(-1), minlength=n_verts)
    n_bound = np.bincount(uniq[counts == 1].reshape(-1), minlength=n_verts)
    # one fan: interior vertex has as many faces as edges; a boundary vertex one fewer (2 boundary edges)
    interior_ok = (n_bound == 0) & (n_faces == n_edges)
    boundary_ok = (n_bound == 2) & (n_faces == n_edges - 1)
    used = n_faces > 0
    bad |= used & ~(interior_ok | boundary_ok)
    return np.flatnonzero(bad)


def _relax_slivers(
    v: np.ndarray, f: np.ndarray, n_fixed: int, min_angle_deg: float = 20.0, passes: int = 3
) -> np.ndarray:
    """Move free vertices of sliver triangles to the mean of their neighbours.

    Near a crumpled fixed boundary the remesher's projection can put a free vertex on a
    boundary edge (a zero-area triangle); a few local umbrella steps repair that.
    """
    if len(f) == 0:
        return v
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(v), len(v))).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    v = v.copy()
    for _ in range(passes):
        bad = min_angles(v, f) < min_angle_deg
        if not bad.any():
            break
        move = np.zeros(len(v), dtype=bool)
        move[f[bad].reshape(-1)] = True
        move[:n_fixed] = False
        if not move.any():
            break
        mean = (adj @ v) / np.maximum(deg, 1)[:, None]
        v[move] = mean[move]
    return v


def _remesh_botsch(v: np.ndarray, f: np.ndarray, iterations: int, edge_um: float, project: bool, fixed: np.ndarray):
    """``gpytoolbox.remesh_botsch(v, f, iterations, edge_um, project, feature=fixed)`` for a
    patch that :func:`_remesh_patch` has already checked: no edge with more than two faces, and
    ``fixed`` exactly its boundary vertices, sorted (none for a closed patch). The binding is called directly, with the
    vertex order the wrapper gives it (the feature vertices first, in their order, then the
    others): the same result, without the wrapper's own edge tables (its unique-rows sorts of
    every half-edge were ~10% of a shared-membrane rebuild on agg4-fine). Falls back to the
    wrapper when the binding is not there as expected."""
    import gpytoolbox as gp

    try:
        from gpytoolbox_bindings import _remesh_botsch_cpp_impl as impl
    except ImportError:
        impl = None
    if impl is None:
        return gp.remesh_botsch(v, f, iterations, edge_um, project, feature=fixed.astype(np.int32))
    n = len(v)
    others = np.ones(n, dtype=bool)
    others[fixed] = False
    order = np.concatenate([fixed, np.flatnonzero(others)]).astype(np.int32)
    position = np.empty(n, dtype=np.int32)
    position[order] = np.arange(n, dtype=np.int32)
    return impl(
        np.ascontiguousarray(v[order], dtype=np.float64),
        np.ascontiguousarray(position[f], dtype=np.int32),
        int(iterations),
        float(edge_um),
        np.arange(len(fixed), dtype=np.int32),
        np.zeros((0, 2), dtype=np.int32),
        bool(project),
    )


def _remesh_patch(verts: np.ndarray, faces: np.ndarray, edge_um: float, iterations: int, project: bool):
    """Remesh one consistently wound patch (global vertex ids in ``faces``).

    Returns (global ids of the fixed vertices, new vertex positions, new faces, faces kept
    unchanged) where new faces index [fixed vertices..., new vertices...] and kept faces use
    global ids, or None if the patch is to be left unchanged.
    """
    # Non-manifold spots (edges with more than two faces, pinched vertices) are cut out: the
    # faces around them are kept as they are and the rest is remeshed with the cut held fixed.
    # Two faces on the same three vertices (a two-triangle "pillow", left by surface nets where
    # a cell is one voxel thin) are kept as they are too: gpytoolbox's remesh_botsch crashes
    # the process (SIGSEGV) on them.
    key = np.sort(faces, axis=1)
    m = int(key.max()) + 1 if len(key) else 1
    if m < 2_000_000:  # one int64 per sorted face: a 1D unique, ~10x faster than on rows
        _, inverse, counts = np.unique(
            (key[:, 0] * m + key[:, 1]) * m + key[:, 2], return_inverse=True, return_counts=True
        )
    else:
        _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    kept = counts[inverse.reshape(-1)] > 1
    for _ in range(6):
        bad = _nonmanifold_vertices(faces[~kept], len(verts))
        if len(bad) == 0:
            break
        kept |= np.isin(faces, bad).any(axis=1)
    else:
        return None
    if kept.all():
        return None
    kept_faces = faces[kept]
    used = np.unique(faces[~kept])
    local = np.full(len(verts), -1, dtype=np.int64)
    local[used] = np.arange(len(used))
    v = verts[used]
    f = local[faces[~kept]]
    origin_of = used  # local vertex -> global id
    _, _, same = _face_face_manifold_pairs(f)
    if same.any() or np.any(face_areas(v, f) <= 0):
        return None
    uniq, counts = edge_counts(f)
    if np.any(counts > 2):
        return None  # non-manifold (gpytoolbox refuses it)
    boundary = uniq[counts == 1]
    fixed = np.unique(boundary) if len(boundary) else np.zeros(0, dtype=np.int64)
    if len(fixed) == len(v):
        return None
    checkpoint()
    try:
        new_v, new_f = _remesh_botsch(v, f, iterations, edge_um, project, fixed)
    except (ValueError, RuntimeError, MemoryError):
        return None
    checkpoint()
    new_f = np.asarray(new_f, dtype=np.int64)
    new_v = _relax_slivers(np.asarray(new_v, dtype=np.float64), new_f, len(fixed))
    if len(new_f) == 0 or not np.all(np.isfinite(new_v)) or not np.array_equal(new_v[: len(fixed)], v[fixed]):
        return None
    # the boundary must come back edge for edge, or the patches would not stitch
    pos = np.full(len(v), -1, dtype=np.int64)
    pos[fixed] = np.arange(len(fixed))
    before = {tuple(e) for e in np.sort(pos[boundary], axis=1).tolist()}
    after_b = _boundary_edges(new_f)
    after = {tuple(e) for e in after_b.tolist()}
    if before != after:
        return None
    return origin_of[fixed], new_v[len(fixed) :], new_f, kept_faces


def _keep_volume(new_v: np.ndarray, new_f: np.ndarray, target_signed: float) -> np.ndarray:
    """Offset a closed patch (wound like its input) so its signed volume equals the input's."""
    if target_signed == 0:
        return new_v
    outward = new_f if target_signed > 0 else new_f[:, [0, 2, 1]]
    return offset_to_volume(Mesh(new_v, outward), abs(target_signed)).verts


def _restore_cell_volumes(verts, faces, labels, outer_free: dict, target: np.ndarray, passes: int = 3):
    """Offset the free vertices of each cell's outer patch along its outward normals so that
    the cell keeps its volume (shared membranes and junctions are not moved)."""
    verts = verts.copy()
    for _ in range(passes):
        checkpoint()
        current = volumes_by_label(verts, faces, labels, len(target))
        for cell, free in outer_free.items():
            sel = (labels[:, 0] == 0) & (labels[:, 1] == cell)
            f = faces[sel]
            n = -face_normals(verts, f, unit=False)  # (0, cell) faces point into the cell
            vn = np.zeros_like(verts)
            for k in range(3):
                np.add.at(vn, f[:, k], n)
            moving = np.zeros(len(verts), dtype=bool)
            moving[free] = True
            # area that actually moves: each face weighted by its share of free corners
            share = moving[f].sum(axis=1) / 3.0
            area = float((0.5 * np.linalg.norm(n, axis=1) * share).sum())
            length = np.linalg.norm(vn[free], axis=1, keepdims=True)
            if area <= 0 or not np.any(length > 0):
                continue
            d = (target[cell] - current[cell]) / area
            unit = np.divide(vn[free], length, out=np.zeros_like(vn[free]), where=length > 0)
            verts[free] += d * unit
    return verts


def remesh(
    mesh: Mesh,
    edge_um: float,
    iterations: int = 10,
    *,
    project: bool = True,
    preserve_volume: bool = True,
    resample_junctions: bool = True,
) -> Mesh:
    """Isotropic remeshing to a target edge length, cell by cell (see the module docstring).

    Parameters
    ----------
    mesh : Mesh
        Plain closed surface or labelled multi-cell mesh; face winding is first repaired with
        :func:`~deltamic_core.geometry.orient_outward`.
    edge_um : float
        Target edge length in micrometres.
    iterations : int
        Botsch-Kobbelt iterations (split, collapse, flip, smooth, project).
    project : bool
        Project the new vertices back onto the input surface (keeps the shape).
    preserve_volume : bool
        Keep every cell's volume: new vertices lie on the input's facets, so without this each
        remesh shrinks convex cells (about 2% at edge = R / 4). Closed surfaces without
        junctions are offset along their normals; in a multi-material mesh the free vertices
        of each cell's outer membrane (0, cell) are (shared membranes and junctions stay put).
    resample_junctions : bool
        First split long and collapse short junction edges (where three regions meet) towards
        ``edge_um``, on the whole mesh so that adjacent patches stay stitched (see
        :mod:`deltamic_core.geometry._junctions`).

    Returns
    -------
    Mesh
        New mesh with the same cells and labels convention; ``metadata`` is copied, with
        ``metadata['remesh']`` recording the edge length and any patch left unchanged.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a Mesh, got {type(mesh).__name__}")
    try:
        edge_um = float(edge_um)
    except (TypeError, ValueError):
        raise TypeError(f"edge_um must be a number (um), got {edge_um!r}") from None
    if not np.isfinite(edge_um) or edge_um <= 0:
        raise ValueError(f"edge_um must be positive and finite, got {edge_um}")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    extent = float(np.ptp(mesh.verts, axis=0).max()) if len(mesh.verts) else 0.0
    if extent > 0 and extent / edge_um > 2000:
        raise ValueError(
            f"edge_um={edge_um} is tiny compared with the mesh size ({extent:.3g} um): "
            "the result would have billions of triangles"
        )
    plain = mesh.labels is None
    fixed_mesh = orient_outward(mesh)
    labels = fixed_mesh.labels if not plain else np.tile(np.array([[1, 0]], np.int32), (len(mesh.faces), 1))
    faces = fixed_mesh.faces
    verts = fixed_mesh.verts
    if resample_junctions and not plain:
        verts, faces, labels = _resample_junctions(verts, faces, labels, edge_um)
    pair_key = labels[:, 0].astype(np.int64) * (int(labels.max()) + 1) + labels[:, 1]

    out_verts = [verts]  # original vertices first; unused ones are dropped at the end
    out_faces, out_labels, skipped = [], [], []
    outer_free = {}  # cell -> indices of the free (new) vertices of its outer patch (0, cell)
    n_total = len(verts)
    for key in np.unique(pair_key):
        checkpoint()
        sel = pair_key == key
        patch_faces = faces[sel]
        pair = labels[np.flatnonzero(sel)[0]]
        result = _remesh_patch(verts, patch_faces, edge_um, iterations, project)
        if result is None:
            skipped.append((int(pair[0]), int(pair[1])))
            out_faces.append(patch_faces)
        else:
            fixed_global, new_v, new_f, kept_faces = result
            if preserve_volume and len(fixed_global) == 0 and len(kept_faces) == 0:
                new_v = _keep_volume(new_v, new_f, signed_volume(verts, patch_faces))
            index = np.concatenate([fixed_global, n_total + np.arange(len(new_v))])
            if not plain and pair[0] == 0 and pair[1] > 0 and len(fixed_global) > 0:
                outer_free[int(pair[1])] = n_total + np.arange(len(new_v))
            out_verts.append(new_v)
            n_total += len(new_v)
            out_faces.append(np.concatenate([index[new_f], kept_faces]))
        out_labels.append(np.tile(pair, (len(out_faces[-1]), 1)))
    if skipped:
        warnings.warn(
            f"remesh: {len(skipped)} interface patch(es) {skipped} could not be remeshed safely "
            "(non-manifold or degenerate) and were kept as they are",
            stacklevel=2,
        )
    all_v = np.concatenate(out_verts)
    all_f = np.concatenate(out_faces)
    all_l = np.concatenate(out_labels).astype(np.int32)
    checkpoint()
    if resample_junctions and not plain:
        all_v, all_f, all_l = _relieve_junction_fans(all_v, all_f, all_l, edge_um)
    if preserve_volume and outer_free:
        target = volumes_by_label(fixed_mesh.verts, fixed_mesh.faces, fixed_mesh.labels, int(all_l.max()) + 1)
        all_v = _restore_cell_volumes(all_v, all_f, all_l, outer_free, target)
    used = np.zeros(len(all_v), dtype=bool)
    used[all_f.reshape(-1)] = True
    new_index = np.cumsum(used) - 1
    metadata = dict(mesh.metadata)
    metadata["remesh"] = {"edge_um": edge_um, "iterations": int(iterations), "unchanged_patches": skipped}
    return Mesh(
        all_v[used],
        new_index[all_f],
        None if plain else all_l,
        metadata,
    )
