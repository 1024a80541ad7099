"""Which cells touch where, decided by their surfaces rather than by their voxels.

Rebuilding a shared-membrane mesh from a label image (``meshes_from_labels(shared=True)``)
makes a contact wherever voxels of two cells are face-adjacent: on voxels of 0.5-1 um that
zips two surfaces up to a voxel apart (the shared sheet runs past the junction into the wedge
between the cells) and leaves two near-touching surfaces unmerged wherever one voxel centre
happens to fall between them. :func:`contact_labels_by_gap` corrects the label image near the
cells' interfaces with exact distances to the surfaces the labels were rasterised from: with
``s_c(x)`` the signed distance of the voxel centre ``x`` to cell ``c``'s closed surface
(negative inside), ``w = s_a(x) + s_b(x)`` is the local width of the gap between cells ``a``
and ``b`` (exact between parallel sheets, negative where they overlap), and

* a background voxel next to two cells with ``w <= gap_um`` goes to the nearer cell (a thin
  gap closes: the two surfaces become one membrane);
* two face-adjacent voxels of cells ``a`` and ``b`` are a contact only where ``w <= gap_um``
  at their common face; a voxel that touches other cells only where they are apart becomes
  background (the membrane is not shared there; the rebuilt surface is then snapped back).
"""

from __future__ import annotations

import numpy as np

from ..mesh import Mesh
from .ops import cell_faces, cell_surface
from .rasterize import inside_mask

__all__ = ["contact_labels_by_gap", "touching_pairs", "zip_new_contacts"]


def _signed_distances(points, idx_frac, mesh, cells, vox, margin):
    """(len(cells), P) signed distances (um, negative inside) of ``points`` to each cell's
    closed surface, +inf for points more than ``margin`` voxels (per axis) outside the cell's
    bounding box; ``idx_frac`` (P, 3) are the points in voxel units, all on one grid shifted
    by a common sub-voxel offset from the voxel centres (the rasteriser's inside test is used
    on that shifted grid, so the sign agrees with the label image's)."""
    from gpytoolbox import squared_distance

    sd = np.full((len(cells), len(points)), np.inf)
    if len(points) == 0:
        return sd
    shift = idx_frac[0] - np.floor(idx_frac[0])
    grid_idx = np.round(idx_frac - shift).astype(np.int64)
    for k, c in enumerate(cells):
        faces = cell_faces(mesh, c)
        if len(faces) == 0:
            continue
        corners = vox[np.unique(faces)] - shift
        lo = np.floor(corners.min(axis=0)).astype(np.int64) - margin
        hi = np.ceil(corners.max(axis=0)).astype(np.int64) + margin + 1
        sel = np.nonzero(np.all((grid_idx >= lo) & (grid_idx < hi), axis=1))[0]
        if len(sel) == 0:
            continue
        surf = cell_surface(mesh, c)
        d2, _, _ = squared_distance(points[sel], surf.verts, surf.faces.astype(np.int64), use_cpp=True)
        inside = inside_mask(vox - shift - lo, faces, tuple(int(n) for n in hi - lo))[tuple((grid_idx[sel] - lo).T)]
        sd[k, sel] = np.where(inside, -1.0, 1.0) * np.sqrt(d2)
    return sd


def contact_labels_by_gap(
    lab: np.ndarray, mesh: Mesh, spacing_um, origin_um, gap_um: float, axis_scale=None
) -> np.ndarray:
    """``lab`` (a label image rasterised from ``mesh``, voxel (0, 0, 0) at ``origin_um``) with
    its contacts decided by the gap between the cells' surfaces (see the module docstring);
    ``gap_um`` <= 0 returns ``lab`` unchanged. ``axis_scale`` (3 positive floats, e.g. the
    PSF's widths (z, y, x)): the gap is measured in coordinates divided by
    ``axis_scale / min(axis_scale)``, so that two sheets apart along z by ``gap_um`` x that
    ratio count as touching, like two sheets ``gap_um`` apart laterally (what a microscope
    whose axial PSF is wider cannot tell from one sheet either).

    The gap is evaluated at background voxels' centres (the gap passes through the voxel) and,
    for two face-adjacent voxels of different cells, at the middle of their common face
    (where surface nets put the membrane between them; at a voxel centre near a junction the
    nearest surface can be the cell's own free membrane, not the contact)."""
    from scipy import ndimage as ndi

    lab = np.asarray(lab)
    ids = [int(i) for i in np.unique(lab) if i > 0]
    if gap_um <= 0 or len(ids) < 2:
        return lab
    spacing = np.asarray(spacing_um, float)
    origin = np.asarray(origin_um, float)
    vox = (mesh.verts - origin) / spacing
    scale = np.ones(3) if axis_scale is None else np.asarray(axis_scale, float)
    if scale.shape != (3,) or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise ValueError(f"axis_scale must be 3 positive floats, got {axis_scale!r}")
    scale = scale / scale.min()
    metric = mesh.copy(verts=mesh.verts / scale)  # distances measured in scaled coordinates
    pos = {c: k for k, c in enumerate(ids)}
    out = lab.copy()
    # background voxels with two cells among their 26 neighbours: filled where the gap is thin
    # (each cell in its bounding box: a label image of many cells is large)
    # beyond `margin` voxels of a cell's bounding box its surface is further than the gap
    margin = int(np.ceil(gap_um * scale.max() / spacing.min())) + 1
    near = np.zeros(lab.shape, np.int8)
    objects = ndi.find_objects(lab.astype(np.int64, copy=False))
    for c in ids:
        box = tuple(slice(max(sl.start - 1, 0), min(sl.stop + 1, n)) for sl, n in zip(objects[c - 1], lab.shape))
        sub = lab[box]
        near[box] += ndi.binary_dilation(sub == c, structure=np.ones((3, 3, 3), bool)) & (sub != c)
    bidx = np.argwhere((lab == 0) & (near >= 2))
    if len(bidx):
        sd = _signed_distances((origin + bidx * spacing) / scale, bidx.astype(float), metric, ids, vox, margin)
        part = np.sort(sd, axis=0)
        close = part[0] + part[1] <= gap_um
        out[tuple(bidx[close].T)] = np.asarray(ids, dtype=lab.dtype)[np.argmin(sd, axis=0)[close]]
    # face-adjacent voxels of two cells: a contact where the gap at their common face is thin;
    # a voxel touching other cells only where they are apart becomes background
    touching = np.zeros(lab.shape, bool)
    joined = np.zeros(lab.shape, bool)
    for axis in range(3):
        a = np.moveaxis(lab, axis, 0)
        p, q = a[:-1], a[1:]
        sel = (p > 0) & (q > 0) & (p != q)
        if not sel.any():
            continue
        pidx = np.argwhere(sel)  # in the moved frame
        order = [axis] + [i for i in range(3) if i != axis]
        back = np.argsort(order)
        p_full = pidx[:, back]  # voxel index of p in (z, y, x)
        step = np.zeros(3)
        step[axis] = 0.5
        frac = p_full + step
        sd = _signed_distances((origin + frac * spacing) / scale, frac, metric, ids, vox, margin)
        lp, lq = p[sel], q[sel]
        cols = np.arange(len(lp))
        w = sd[[pos[int(c)] for c in lp], cols] + sd[[pos[int(c)] for c in lq], cols]
        q_full = p_full.copy()
        q_full[:, axis] += 1
        for v in (p_full, q_full):
            touching[tuple(v.T)] = True
            joined[tuple(v[w <= gap_um].T)] = True
    out[touching & ~joined] = 0
    return out


def touching_pairs(lab: np.ndarray) -> set:
    """The pairs (a, b), a < b, of cells with face-adjacent voxels in the label image."""
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(lab, axis, 0)
        p, q = a[1:], a[:-1]
        sel = (p != q) & (p > 0) & (q > 0)
        pairs.update(zip(np.minimum(p[sel], q[sel]).tolist(), np.maximum(p[sel], q[sel]).tolist()))
    return pairs


def zip_new_contacts(lab: np.ndarray, zipped: np.ndarray, pairs=None, reach: int = 2) -> np.ndarray:
    """``lab`` with some contacts taken from ``zipped`` (a label image of the same cells whose
    contacts were decided by a wider gap): ``pairs`` ((a, b) tuples, a < b; None = the pairs
    of cells that touch in ``zipped`` but not in ``lab``). Near each of them (within ``reach``
    voxels of their interface in ``zipped``) the voxels of either cell in either image take
    ``zipped``'s label; the other contacts, and everything away from these pairs, stay as in
    ``lab``."""
    from scipy import ndimage as ndi

    new = touching_pairs(zipped) - touching_pairs(lab) if pairs is None else set(pairs) & touching_pairs(zipped)
    if not new:
        return lab
    out = lab.copy()
    for a, b in sorted(new):
        za, zb = zipped == a, zipped == b
        ball = np.ones((3, 3, 3), bool)
        interface = (za & ndi.binary_dilation(zb, ball)) | (zb & ndi.binary_dilation(za, ball))
        near = ndi.binary_dilation(interface, ball, iterations=reach)
        ours = np.isin(zipped, (a, b)) | np.isin(lab, (a, b))
        take = near & ours & (zipped != lab)
        out[take] = zipped[take]
    return out
