"""Editing the cells of a multi-material mesh: delete a cell, merge two, split one by a plane.

Every operation takes a :class:`~deltamic_core.mesh.Mesh` (a plain mesh is one cell, id 1) and
returns a new labelled Mesh (the input is never modified) whose cells are numbered 1..n again
in the order of their old ids (an edit never leaves a gap), with the labels convention of
:mod:`deltamic_core.mesh`: the normal of face f points from ``labels[f, 0]`` into
``labels[f, 1]``. Closed cells stay closed: each operation keeps every edge of every cell's
surface shared by exactly two of that cell's faces.

- :func:`delete_cell`: the cell's outer faces go; the membranes it shared with a neighbour stay
  as that neighbour's outer faces, so the neighbours are unchanged (same vertices, volume).
- :func:`merge_cells`: the membrane between the two cells goes and one id remains; the merged
  cell's volume is the sum of the two, its area the sum less twice the removed membrane.
- :func:`split_cell`: the plane halfway between two points, perpendicular to the line joining
  them, cuts the cell; the triangles it crosses are cut (also the neighbours' triangles that
  share a cut edge, so no T-junction remains), the cross-section is closed by a triangulated
  wall (a shared membrane between the two parts) and the part on the second point's side
  becomes a new cell.
"""

from __future__ import annotations

import numpy as np

from ..mesh import Mesh
from .ops import edge_lengths, face_labels

__all__ = ["delete_cell", "merge_cells", "split_cell", "renumber_cells", "compact"]


def _check_cell(mesh: Mesh, cell, what: str = "cell") -> int:
    ids = [int(c) for c in np.unique(face_labels(mesh)) if c > 0]
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or int(cell) not in ids:
        raise ValueError(f"{what} {cell!r} is not a cell of this mesh (cells: {ids})")
    return int(cell)


def compact(mesh: Mesh) -> Mesh:
    """The same mesh without the vertices no face uses (vertex order otherwise kept)."""
    used = np.zeros(len(mesh.verts), dtype=bool)
    used[mesh.faces.reshape(-1)] = True
    new_index = np.cumsum(used) - 1
    return mesh.copy(verts=mesh.verts[used], faces=new_index[mesh.faces])


def renumber_cells(labels: np.ndarray) -> np.ndarray:
    """Labels with the cell ids replaced by 1..n in increasing order of the old ids (0 stays)."""
    lab = np.asarray(labels, dtype=np.int64)
    ids = np.unique(lab)
    lut = np.zeros(int(ids.max()) + 1 if len(ids) else 1, dtype=np.int32)
    cells = ids[ids > 0]
    lut[cells] = np.arange(1, len(cells) + 1, dtype=np.int32)
    return lut[lab].astype(np.int32)


def _finish(mesh: Mesh, faces, labels) -> Mesh:
    out = mesh.copy(faces=np.asarray(faces, dtype=np.int64), labels=renumber_cells(labels))
    return compact(out)


def delete_cell(mesh: Mesh, cell: int) -> Mesh:
    """``mesh`` without ``cell``: its outer faces removed, the faces it shared with a
    neighbour kept as that neighbour's outer faces (labels (0, d) with the same winding)."""
    cell = _check_cell(mesh, cell)
    labels = face_labels(mesh).copy()
    if len(np.unique(labels[labels > 0])) == 1:
        raise ValueError(f"cell {cell} is the only cell: nothing would be left")
    outer = (labels == cell).any(axis=1) & (labels == 0).any(axis=1)
    keep = ~outer
    labels[labels == cell] = 0  # a shared face (cell, d) becomes (0, d): same normal, into d
    return _finish(mesh, mesh.faces[keep], labels[keep])


def merge_cells(mesh: Mesh, cell_a: int, cell_b: int) -> Mesh:
    """One cell from ``cell_a`` and ``cell_b``: the membrane between them removed, every face
    of ``cell_b`` relabelled ``cell_a`` (then the ids renumbered 1..n). Two cells that do not
    touch become one cell of two pieces."""
    a = _check_cell(mesh, cell_a, "cell_a")
    b = _check_cell(mesh, cell_b, "cell_b")
    if a == b:
        raise ValueError(f"cannot merge cell {a} with itself: pick two different cells")
    labels = face_labels(mesh).copy()
    between = np.sort(labels, axis=1)
    keep = ~((between[:, 0] == min(a, b)) & (between[:, 1] == max(a, b)))
    labels[labels == b] = a
    return _finish(mesh, mesh.faces[keep], labels[keep])


def _cut_face(face, cuts):
    """Sub-triangles (same winding) of triangle ``face`` (3 vertex ids) whose edges k -> k+1
    carry a new vertex ``cuts[k]`` (or -1): one cut gives two triangles, two cuts three."""
    v = list(face)
    m = list(cuts)
    k = [i for i in range(3) if m[i] >= 0]
    if len(k) == 1:
        i = k[0]
        a, b, c = v[i], v[(i + 1) % 3], v[(i + 2) % 3]
        return [(a, m[i], c), (m[i], b, c)]
    # two cut edges: the vertex they share is cut off from the other two
    i = ({0, 1, 2} - set(k)).pop()  # the uncut edge i -> i+1; the isolated vertex is i+2
    j = (i + 2) % 3
    a, b, c = v[j], v[(j + 1) % 3], v[(j + 2) % 3]
    m1, m2 = m[j], m[(j + 2) % 3]  # on a -> b and on c -> a
    return [(a, m1, m2), (m1, b, c), (m1, c, m2)]


def _loops(segments: dict) -> list:
    """Closed loops (lists of vertex ids) of directed segments ``{start: end}``."""
    left = dict(segments)
    loops = []
    while left:
        start, nxt = left.popitem()
        loop = [start]
        while nxt != start:
            loop.append(nxt)
            if nxt not in left:
                raise ValueError("the cell's surface is not closed where the plane cuts it")
            nxt = left.pop(nxt)
        loops.append(loop)
    return loops


def _cap(points, loops, normal, edge_um):
    """Triangulate the plane region bounded by ``loops`` (ids into ``points``): returns new
    interior points (N, 3) and triangles (ids into points, then the new points) whose normals
    are ``normal``."""
    from gpytoolbox import triangulate_polygon

    u = np.cross(normal, [1.0, 0.0, 0.0])
    if np.linalg.norm(u) < 0.5:
        u = np.cross(normal, [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)  # u x v = normal
    ids = np.array([i for loop in loops for i in loop])
    origin = points[ids].mean(axis=0)
    uv = np.stack([(points[ids] - origin) @ u, (points[ids] - origin) @ v], axis=1)
    local = {int(i): k for k, i in enumerate(ids)}
    edges = np.array([(local[loop[k]], local[loop[(k + 1) % len(loop)]]) for loop in loops for k in range(len(loop))])
    area = np.sqrt(3.0) / 4.0 * edge_um**2
    uv2, tris = triangulate_polygon(uv, edges, a=area, q=np.pi / 8.0, steiner=False)
    uv2, tris = np.asarray(uv2, dtype=np.float64), np.asarray(tris, dtype=np.int64)
    if len(uv2) < len(uv) or not np.allclose(uv2[: len(uv)], uv, atol=1e-9 * max(edge_um, 1e-12)):
        raise ValueError("the cross-section of the cell could not be triangulated")
    extra = origin + uv2[len(uv) :, :1] * u + uv2[len(uv) :, 1:] * v
    # wind every triangle so that its normal is `normal` (counter-clockwise in (u, v))
    p = uv2[tris]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    cross = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    tris[cross < 0] = tris[cross < 0][:, [0, 2, 1]]
    glob = np.concatenate([ids, len(points) + np.arange(len(extra))])
    return extra, glob[tris]


def split_cell(mesh: Mesh, cell: int, point_a, point_b, *, edge_um: float | None = None) -> Mesh:
    """Cut ``cell`` in two by the plane halfway between ``point_a`` and ``point_b`` (um, z y x),
    perpendicular to the line joining them; the part on ``point_b``'s side becomes a new cell
    (id n + 1 before renumbering, so the last id). The wall between the two parts is one
    shared membrane, triangulated with triangles of about ``edge_um`` (default: the cell's
    mean edge length)."""
    cell = _check_cell(mesh, cell)
    a = np.asarray(point_a, dtype=np.float64).reshape(-1)
    b = np.asarray(point_b, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or b.shape != (3,) or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("split points must be two finite (z, y, x) points in um")
    length = float(np.linalg.norm(b - a))
    if length == 0.0:
        raise ValueError("the two split points are the same point: click two different places in the cell")
    normal = (b - a) / length
    labels = face_labels(mesh).copy()
    faces = mesh.faces
    verts = mesh.verts
    in_cell = (labels == cell).any(axis=1)
    cell_verts = np.unique(faces[in_cell])
    if edge_um is None:
        edge_um = float(np.mean(edge_lengths(verts, faces[in_cell])))
    centre = 0.5 * (a + b)
    dist = (verts - centre) @ normal
    # no vertex exactly on the plane (a cut there would make a zero-area triangle)
    tiny = 1e-7 * edge_um
    while np.min(np.abs(dist[cell_verts])) < tiny:
        centre = centre + 3.1 * tiny * normal
        dist = (verts - centre) @ normal
    side = dist > 0
    if side[cell_verts].all() or not side[cell_verts].any():
        raise ValueError(
            f"the plane halfway between the two points does not cut cell {cell}: put both points "
            "inside the cell, one in each part"
        )
    # the cell's edges that cross the plane get a new vertex each
    fc = faces[in_cell]
    e = np.sort(np.concatenate([fc[:, [0, 1]], fc[:, [1, 2]], fc[:, [2, 0]]]), axis=1)
    e = np.unique(e[side[e[:, 0]] != side[e[:, 1]]], axis=0)
    t = dist[e[:, 0]] / (dist[e[:, 0]] - dist[e[:, 1]])
    new_pts = verts[e[:, 0]] + t[:, None] * (verts[e[:, 1]] - verts[e[:, 0]])
    all_verts = np.concatenate([verts, new_pts])
    # every face holding a cut edge is cut (a neighbour's face along a cut edge too)
    directed = np.stack([faces, np.roll(faces, -1, axis=1)], axis=2)  # (F, 3, 2): edge k -> k+1
    lo, hi = directed.min(axis=2), directed.max(axis=2)
    n = len(all_verts)
    cut_keys = e[:, 0] * n + e[:, 1]  # sorted (np.unique sorted the rows)
    keys = lo * n + hi
    pos = np.minimum(np.searchsorted(cut_keys, keys), len(cut_keys) - 1)
    cuts = np.where(cut_keys[pos] == keys, len(verts) + pos, -1)
    touched = (cuts >= 0).any(axis=1)
    out_faces, out_labels, segments = [faces[~touched]], [labels[~touched]], {}
    new_faces, new_labels = [], []
    for f in np.flatnonzero(touched):
        subs = _cut_face(faces[f], cuts[f])
        new_faces.extend(subs)
        new_labels.extend([labels[f]] * len(subs))
        if in_cell[f]:
            ms = [int(m) for m in cuts[f] if m >= 0]
            if len(ms) != 2:
                raise ValueError(f"cell {cell}'s surface is not closed where the plane cuts it")
            # orient the cross-section's boundary counter-clockwise about `normal`: along
            # normal x (the face's normal leaving the cell)
            p = all_verts[faces[f]]
            out_n = np.cross(p[1] - p[0], p[2] - p[0]) * (1.0 if labels[f, 0] == cell else -1.0)
            m0, m1 = ms
            if np.dot(all_verts[m1] - all_verts[m0], np.cross(normal, out_n)) < 0:
                m0, m1 = m1, m0
            if m0 in segments:
                raise ValueError(f"cell {cell}'s surface is not a simple closed surface where the plane cuts it")
            segments[m0] = m1
    faces2 = np.concatenate([*out_faces, np.asarray(new_faces, dtype=np.int64).reshape(-1, 3)])
    labels2 = np.concatenate([*out_labels, np.asarray(new_labels, dtype=np.int32).reshape(-1, 2)])
    # the part of the cell on b's side becomes the new cell
    new_id = int(labels.max()) + 1
    dist2 = (all_verts - centre) @ normal
    beyond = dist2[faces2].sum(axis=1) > 0
    move = beyond[:, None] & (labels2 == cell)
    labels2[move] = new_id
    # the wall: normal from the kept part (negative side) into the new cell
    extra, wall = _cap(all_verts, _loops(segments), normal, edge_um)
    all_verts = np.concatenate([all_verts, extra])
    faces2 = np.concatenate([faces2, wall])
    labels2 = np.concatenate([labels2, np.tile(np.array([[cell, new_id]], dtype=np.int32), (len(wall), 1))])
    out = Mesh(all_verts, faces2, labels2, dict(mesh.metadata))
    return out.copy(labels=renumber_cells(out.labels))
