"""Rasterising cells into a label image (voxel centre inside a cell's closed surface -> id)."""

from __future__ import annotations

import numpy as np

from .._checks import check_memory, check_shape, check_spacing, check_vector3
from ..mesh import Mesh
from .ops import cell_faces, face_labels

__all__ = ["label_image", "inside_mask"]

# Rays are shifted by this fraction of a voxel (two unrelated values) so that they never pass
# exactly through mesh vertices or edges: marching-cubes vertices sit exactly on voxel-centre
# lines, where a ray through them would be counted by zero or two triangles. The shift moves
# the classification only for voxel centres within ~1e-6 voxel of the surface.
_RAY_OFFSET = (1.2345678e-6, 2.7182818e-6)


def _crossings(tri: np.ndarray, ni: int, nj: int):
    """Ray-triangle crossings for rays along axis 2 at (i + d0, j + d1), i < ni, j < nj.

    ``tri`` is (T, 3, 3) in voxel-index units. Returns ray indices (i, j) and the crossing
    positions along axis 2 (voxel-index units).
    """
    d0, d1 = _RAY_OFFSET
    a = tri[:, :, 0] - d0  # (T, 3) axis-0 coordinates relative to the shifted ray lattice
    b = tri[:, :, 1] - d1
    i_lo = np.clip(np.ceil(a.min(axis=1)), 0, ni).astype(np.int64)
    i_hi = np.clip(np.floor(a.max(axis=1)), -1, ni - 1).astype(np.int64)
    j_lo = np.clip(np.ceil(b.min(axis=1)), 0, nj).astype(np.int64)
    j_hi = np.clip(np.floor(b.max(axis=1)), -1, nj - 1).astype(np.int64)
    n_i = np.maximum(i_hi - i_lo + 1, 0)
    n_j = np.maximum(j_hi - j_lo + 1, 0)
    count = n_i * n_j
    keep = count > 0
    if not keep.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    tri, a, b = tri[keep], a[keep], b[keep]
    i_lo, j_lo, n_j, count = i_lo[keep], j_lo[keep], n_j[keep], count[keep]
    t = np.repeat(np.arange(len(tri)), count)
    # position of each candidate inside its triangle's bounding box of rays
    start = np.cumsum(count) - count
    local = np.arange(int(count.sum())) - np.repeat(start, count)
    ii = i_lo[t] + local // n_j[t]
    jj = j_lo[t] + local % n_j[t]
    p0 = ii - a[t, 0]
    p1 = jj - b[t, 0]
    e1a, e1b = a[t, 1] - a[t, 0], b[t, 1] - b[t, 0]
    e2a, e2b = a[t, 2] - a[t, 0], b[t, 2] - b[t, 0]
    det = e1a * e2b - e1b * e2a
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (p0 * e2b - p1 * e2a) / det
        r = (e1a * p1 - e1b * p0) / det
        hit = (det != 0) & (s >= 0) & (r >= 0) & (s + r <= 1)
    t, s, r, ii, jj = t[hit], s[hit], r[hit], ii[hit], jj[hit]
    x = tri[t, 0, 2] + s * (tri[t, 1, 2] - tri[t, 0, 2]) + r * (tri[t, 2, 2] - tri[t, 0, 2])
    return ii, jj, x


def inside_mask(verts_vox: np.ndarray, faces: np.ndarray, shape) -> np.ndarray:
    """Boolean (Z, Y, X) mask of voxel centres inside a closed surface by ray parity along x.

    ``verts_vox`` are in voxel-index units (voxel (i, j, k) centre at (i, j, k)). Orientation
    is ignored (parity), so wrongly wound faces do no harm; duplicated faces would.
    """
    nz, ny, nx = shape
    tri = verts_vox[faces]
    ii, jj, x = _crossings(tri, nz, ny)
    out = np.zeros(shape, dtype=bool)
    if len(x) == 0:
        return out
    k = np.clip(np.ceil(x), 0, nx).astype(np.int64)
    toggles = np.zeros((nz, ny, nx + 1), dtype=np.uint8)
    np.add.at(toggles, (ii, jj, k), 1)
    # uint8 wrap-around is harmless: only the parity is used
    np.cumsum(toggles, axis=2, dtype=np.uint8, out=toggles)
    return (toggles[:, :, :nx] & 1).astype(bool)


def label_image(mesh: Mesh, shape, spacing_um, origin_um=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Rasterise every cell of ``mesh`` on a voxel grid.

    Parameters
    ----------
    mesh : Mesh
        Closed cell surfaces, vertices in um (z, y, x). A plain mesh is cell 1.
    shape : 3 ints
        Grid (Z, Y, X).
    spacing_um : float or 3 floats
        Voxel size (z, y, x) in micrometres.
    origin_um : 3 floats
        Position of the centre of voxel (0, 0, 0) in micrometres.

    Returns
    -------
    (Z, Y, X) int32
        Cell id where the voxel centre lies inside that cell's closed surface, else 0. Where
        cells overlap, the smaller id wins. Each cell is processed in its bounding box only.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a Mesh, got {type(mesh).__name__}")
    shape = check_shape(shape, "shape")
    spacing = np.asarray(check_spacing(spacing_um, "spacing_um"))
    origin = np.asarray(check_vector3(origin_um, "origin_um"))
    check_memory(4.0 * np.prod(shape, dtype=float), f"label image of shape {shape}")
    out = np.zeros(shape, dtype=np.int32)
    vox = (mesh.verts - origin) / spacing
    labels = face_labels(mesh)
    for cell in np.unique(labels[labels > 0]):
        faces = cell_faces(mesh, int(cell))
        if len(faces) == 0:
            continue
        corners = vox[np.unique(faces)]
        lo = np.maximum(np.floor(corners.min(axis=0)).astype(np.int64), 0)
        hi = np.minimum(np.ceil(corners.max(axis=0)).astype(np.int64) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(int(h - l) for l, h in zip(lo, hi))
        mask = inside_mask(vox - lo, faces, box)
        region = out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        region[mask & (region == 0)] = cell
    return out
