"""Multi-material surface from a label image with shared membranes (multi-label surface nets).

Algorithm
---------
1. The label image is padded with a layer of background (0). Every pair of face-adjacent voxels
   with different labels (a, b) contributes one quad, dual to the voxel face between them. Its
   four corners are the centres of the four "cubes" (2 x 2 x 2 blocks of voxel centres) that
   share the edge joining the two voxel centres. The quad is wound so that its normal points
   from voxel a into voxel b and labelled (a, b): the .rec convention. A membrane between two
   cells is therefore ONE sheet of faces labelled (a, b), shared by both cells, and each label's
   faces form a closed surface around its voxels.
2. One vertex per cube touched by a quad, initially at the cube centre (a voxel corner).
3. Constrained smoothing (surface nets): each vertex moves towards the mean of its neighbours
   (Taubin's lambda/mu steps, which do not shrink the cells), clamped to its cube, so the surface never crosses a voxel centre of the wrong label. A
   vertex whose cube holds 3 labels lies on a junction line and is averaged only with
   neighbouring junction vertices (the line is smoothed along itself); a vertex whose cube
   holds 4 or more labels is a junction point and stays fixed.
4. Each quad is split along its shorter diagonal.

Where two voxels of one label touch only along an edge or a corner, the result has
non-manifold spots (as any voxel-exact surface must); downstream code tolerates them
(:func:`~deltamic_core.geometry.remesh` leaves their neighbourhood unchanged).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..mesh import Mesh

__all__ = ["surface_nets"]

# Offsets (in the two axes u, w after the quad's axis d, cyclically) of the four cubes around
# a voxel edge along d, in counter-clockwise order in the (u, w) plane: normal u x w = +d.
_RING = ((-1, -1), (0, -1), (0, 0), (-1, 0))
_TAUBIN_LAMBDA, _TAUBIN_MU = 0.6, -0.63


def _count_labels(blocks: np.ndarray) -> np.ndarray:
    """Number of distinct values in each row of (M, 8)."""
    s = np.sort(blocks, axis=1)
    return 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)


def surface_nets(label_image: np.ndarray, spacing_um, *, iterations: int = 10) -> Mesh:
    """Shared-membrane multi-material mesh of a label image (see the module docstring).

    Parameters
    ----------
    label_image : (Z, Y, X) int array, 0 = background
    spacing_um : 3 floats
        Voxel size (z, y, x); vertices come out in um in the image frame (voxel (i, j, k)
        centre at (i sz, j sy, k sx)).
    iterations : int
        Constrained smoothing iterations.

    Returns
    -------
    Mesh
        Faces labelled (a, b) with normals from a into b; cell ids are the label values.
    """
    lab = np.pad(np.asarray(label_image), 1)
    shape = np.array(lab.shape)
    cube_shape = shape - 1
    quads, quad_labels = [], []
    for d in range(3):
        u, w = (d + 1) % 3, (d + 2) % 3
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d] = slice(0, -1)
        hi[d] = slice(1, None)
        a, b = lab[tuple(lo)], lab[tuple(hi)]
        diff = a != b
        p = np.argwhere(diff)
        if len(p) == 0:
            continue
        corners = []
        for du, dw in _RING:
            c = p.copy()
            c[:, u] += du
            c[:, w] += dw
            corners.append(np.ravel_multi_index(c.T, cube_shape))
        quads.append(np.stack(corners, axis=1))
        quad_labels.append(np.stack([a[diff], b[diff]], axis=1))
    if not quads:
        raise ValueError("label_image contains no labels (all zero)")
    quads = np.concatenate(quads)
    quad_labels = np.concatenate(quad_labels).astype(np.int32)
    cube_ids, quads = np.unique(quads, return_inverse=True)
    quads = quads.reshape(-1, 4)
    cubes = np.stack(np.unravel_index(cube_ids, cube_shape), axis=1)
    n = len(cube_ids)

    # labels present in each cube's 8 voxels -> vertex kind
    blocks = np.stack(
        [lab[cubes[:, 0] + i, cubes[:, 1] + j, cubes[:, 2] + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
        axis=1,
    )
    kinds = _count_labels(blocks)
    surface_v = kinds <= 2
    junction_v = kinds == 3

    e = np.concatenate([quads[:, [0, 1]], quads[:, [1, 2]], quads[:, [2, 3]], quads[:, [3, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    # junction vertices only listen to junction neighbours
    jmask = sp.diags(junction_v.astype(np.float64))
    adj_junction = (jmask @ adj @ jmask).tocsr()
    deg = np.asarray(adj.sum(axis=1)).ravel()
    deg_j = np.asarray(adj_junction.sum(axis=1)).ravel()
    movable_j = junction_v & (deg_j >= 2)

    pos = cubes + 0.5
    lower, upper = cubes.astype(np.float64), cubes + 1.0
    for step in range(2 * int(iterations)):
        # Taubin's alternating shrink/inflate steps smooth without the volume loss of plain
        # Laplacian averaging.
        factor = _TAUBIN_LAMBDA if step % 2 == 0 else _TAUBIN_MU
        mean_all = (adj @ pos) / np.maximum(deg, 1)[:, None]
        mean_j = (adj_junction @ pos) / np.maximum(deg_j, 1)[:, None]
        new = pos.copy()
        new[surface_v] += factor * (mean_all[surface_v] - pos[surface_v])
        new[movable_j] += factor * (mean_j[movable_j] - pos[movable_j])
        pos = np.clip(new, lower, upper)

    # split each quad along its shorter diagonal (both splits keep the winding)
    d02 = np.linalg.norm(pos[quads[:, 0]] - pos[quads[:, 2]], axis=1)
    d13 = np.linalg.norm(pos[quads[:, 1]] - pos[quads[:, 3]], axis=1)
    use02 = d02 <= d13
    tri_a = np.where(use02[:, None], quads[:, [0, 1, 2]], quads[:, [0, 1, 3]])
    tri_b = np.where(use02[:, None], quads[:, [0, 2, 3]], quads[:, [1, 2, 3]])
    faces = np.concatenate([tri_a, tri_b])
    labels = np.concatenate([quad_labels, quad_labels])
    verts = (pos - 1.0) * np.asarray(spacing_um, dtype=np.float64)  # undo the padding
    return Mesh(verts, faces, labels, {"kind": "surface_nets"})
