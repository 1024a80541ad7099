"""Resampling the junction lines of a multi-material mesh before patch-wise remeshing.

A junction edge is an edge that is not interior to one interface patch (a patch = the faces of
one label pair): it lies where three or more regions meet (or on a non-manifold spot). The
patch-wise remesher keeps these edges fixed, so they are resampled here, on the whole mesh at
once, which keeps every patch that shares a junction consistent:

* a junction edge longer than 4/3 of the target is split at its midpoint, together with every
  face that uses it (one per adjacent patch);
* a junction edge shorter than 4/5 of the target is collapsed when one end is an ordinary
  junction vertex (exactly two junction edges): the two ends merge at the midpoint (or at the
  other end if that is a junction corner), provided the link condition holds (the vertices
  adjacent to both ends are exactly the faces' third corners, so no fold is created) and no
  face around the ends flips or degenerates, and no edge longer than 4/3 of the target appears.

After the patches are remeshed, :func:`relieve_junction_fans` flips edges at junction vertices
whose fans the remesher left crowded with thin triangles.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .._cancel import checkpoint

__all__ = ["resample_junctions", "relieve_junction_fans"]


def _junction_edges(faces: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """Sorted (E, 2) edges that are not interior to a single patch."""
    f = faces
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    p = np.concatenate([patch, patch, patch])
    n = int(f.max()) + 1
    key = e[:, 0] * n + e[:, 1]
    order = np.argsort(key, kind="stable")
    key_s, p_s = key[order], p[order]
    start = np.ones(len(key_s), dtype=bool)
    start[1:] = key_s[1:] != key_s[:-1]
    group = np.cumsum(start) - 1
    counts = np.bincount(group)
    pmin = np.full(len(counts), np.iinfo(np.int64).max)
    pmax = np.full(len(counts), np.iinfo(np.int64).min)
    np.minimum.at(pmin, group, p_s)
    np.maximum.at(pmax, group, p_s)
    interior = (counts == 2) & (pmin == pmax)
    keys = key_s[start][~interior]
    return np.stack([keys // n, keys % n], axis=1)


def _split_long(verts, faces, labels, patch, h_max, max_passes=12):
    for _ in range(max_passes):
        checkpoint()
        junction = _junction_edges(faces, patch)
        if len(junction) == 0:
            break
        length = np.linalg.norm(verts[junction[:, 0]] - verts[junction[:, 1]], axis=1)
        long_edges = junction[length > h_max]
        if len(long_edges) == 0:
            break
        long_edges = long_edges[np.argsort(-length[length > h_max])]
        # faces of each long edge; split at most one edge per face per pass
        n = len(verts)
        lookup = {int(a) * n + int(b): i for i, (a, b) in enumerate(long_edges.tolist())}
        face_edge = np.full(len(faces), -1)
        face_slot = np.full(len(faces), -1)
        chosen = np.zeros(len(long_edges), dtype=bool)
        edge_faces = [[] for _ in range(len(long_edges))]
        for k in range(3):
            a, b = faces[:, k], faces[:, (k + 1) % 3]
            keys = np.minimum(a, b) * n + np.maximum(a, b)
            for fi, key in zip(np.flatnonzero(np.isin(keys, list(lookup))), keys[np.isin(keys, list(lookup))]):
                edge_faces[lookup[int(key)]].append((int(fi), k))
        busy = np.zeros(len(faces), dtype=bool)
        for i, inc in enumerate(edge_faces):
            if any(busy[fi] for fi, _ in inc):
                continue
            chosen[i] = True
            for fi, k in inc:
                busy[fi] = True
                face_edge[fi] = i
                face_slot[fi] = k
        sel = np.flatnonzero(chosen)
        mid_index = np.full(len(long_edges), -1)
        mid_index[sel] = n + np.arange(len(sel))
        verts = np.concatenate([verts, 0.5 * (verts[long_edges[sel, 0]] + verts[long_edges[sel, 1]])])
        split = np.flatnonzero(face_edge >= 0)
        k = face_slot[split]
        a = faces[split, k]
        b = faces[split, (k + 1) % 3]
        c = faces[split, (k + 2) % 3]
        m = mid_index[face_edge[split]]
        first = np.stack([a, m, c], axis=1)
        second = np.stack([m, b, c], axis=1)
        faces = faces.copy()
        faces[split] = first
        faces = np.concatenate([faces, second])
        labels = np.concatenate([labels, labels[split]])
        patch = np.concatenate([patch, patch[split]])
    return verts, faces, labels, patch


def _cross(a, b):
    """Cross product of two 3-sequences in plain Python floats (per-collapse checks run in a
    loop, where numpy's per-call overhead on 3-vectors dominated); the same operations, in the
    same order, as ``numpy.cross``."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _sub(a, b):
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


class _Collapser:
    """Edge collapses on a triangle soup with shared vertices, with safety checks.

    Each collapse looks at a few faces only, where numpy calls on 3-vectors cost more than the
    arithmetic: the vertices and faces it touches are read into Python tuples/lists once
    (``pts``/``tri`` hold only those) and written back at the end.
    """

    def __init__(self, verts, faces):
        self._verts, self._faces = verts.copy(), faces.copy()
        self.pts: dict[int, tuple] = {}
        self.tri: dict[int, list] = {}
        self.alive = np.ones(len(faces), dtype=bool)
        incidence = sp.csr_matrix(
            (np.ones(faces.size, dtype=np.int8), (faces.reshape(-1), np.repeat(np.arange(len(faces)), 3))),
            shape=(len(verts), len(faces)),
        )
        self._indptr, self._indices = incidence.indptr, incidence.indices
        self._vert_faces: dict[int, set] = {}
        self.touched: set = set()

    def point(self, x: int) -> tuple:
        p = self.pts.get(x)
        if p is None:
            p = self.pts[x] = tuple(self._verts[x].tolist())
        return p

    def face(self, fi: int) -> list:
        f = self.tri.get(fi)
        if f is None:
            f = self.tri[fi] = self._faces[fi].tolist()
        return f

    @property
    def verts(self) -> np.ndarray:
        if self.pts:
            index = np.fromiter(self.pts, dtype=np.int64, count=len(self.pts))
            self._verts[index] = np.array(list(self.pts.values()), dtype=self._verts.dtype)
        return self._verts

    @property
    def faces(self) -> np.ndarray:
        if self.tri:
            index = np.fromiter(self.tri, dtype=np.int64, count=len(self.tri))
            self._faces[index] = np.array(list(self.tri.values()), dtype=self._faces.dtype)
        return self._faces

    def faces_of(self, v: int) -> set:
        if v not in self._vert_faces:
            rows = self._indices[self._indptr[v] : self._indptr[v + 1]]
            self._vert_faces[v] = set(rows[self.alive[rows]].tolist())
        return self._vert_faces[v]

    def collapse(self, u: int, v: int, target, h_max: float) -> bool:
        """Merge u into v, placing v at ``target`` (3 floats); refuse (return False) if unsafe."""
        face, point = self.face, self.point
        target = tuple(float(t) for t in target)
        fu, fv = self.faces_of(u), self.faces_of(v)
        shared = fu & fv
        if not shared:
            return False
        opposite = set()
        for fi in shared:
            opposite.update(x for x in face(fi) if x != u and x != v)
        nbr_u = {x for fi in fu for x in face(fi)} - {u, v}
        nbr_v = {x for fi in fv for x in face(fi)} - {u, v}
        if nbr_u & nbr_v != opposite:
            return False  # link condition: collapsing would glue two sheets together
        # like Botsch-Kobbelt: never create an edge longer than the split threshold
        for x in nbr_u | nbr_v:
            d = _sub(point(x), target)
            if math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) > h_max:
                return False
        changed = []
        for fi in (fu | fv) - shared:
            old = face(fi)
            p0, p1, p2 = (target if x == u or x == v else point(x) for x in old)
            q0 = point(old[0])
            before = _cross(_sub(point(old[1]), q0), _sub(point(old[2]), q0))
            after = _cross(_sub(p1, p0), _sub(p2, p0))
            if _dot(before, after) <= 0 or math.sqrt(_dot(after, after)) < 1e-3 * math.sqrt(_dot(before, before)):
                return False  # a face would flip or degenerate
            changed.append((fi, [v if x == u else x for x in old]))
        self.pts[v] = target
        for fi, new in changed:
            self.tri[fi] = new
        for fi in shared:
            self.alive[fi] = False
            for x in face(fi):
                if x in self._vert_faces:
                    self._vert_faces[x].discard(fi)
        self._vert_faces[v] = (fu | fv) - shared
        self._vert_faces[u] = set()
        self.touched.update((u, v))
        return True


def _collapse_short(verts, faces, labels, patch, h_min, h_max):
    junction = _junction_edges(faces, patch)
    if len(junction) == 0:
        return verts, faces, labels, patch
    length = np.linalg.norm(verts[junction[:, 0]] - verts[junction[:, 1]], axis=1)
    short = junction[length < h_min]
    if len(short) == 0:
        return verts, faces, labels, patch
    corner = np.bincount(junction.reshape(-1), minlength=len(verts)) != 2
    state = _Collapser(verts, faces)
    for u, v in short[np.argsort(length[length < h_min])].tolist():
        checkpoint()
        if u in state.touched or v in state.touched:
            continue  # an end already moved or vanished in this pass
        if corner[u] and corner[v]:
            continue
        if corner[u]:
            u, v = v, u  # u (removed) must be an ordinary junction vertex
        pu, pv = state.point(u), state.point(v)
        target = pv if corner[v] else [0.5 * (pu[0] + pv[0]), 0.5 * (pu[1] + pv[1]), 0.5 * (pu[2] + pv[2])]
        state.collapse(u, v, target, h_max)
    alive = state.alive
    return state.verts, state.faces[alive], labels[alive], patch[alive]


def _min_angle(p0, p1, p2) -> float:
    """Smallest angle (degrees) of one triangle given as 3-tuples (plain Python: called in loops)."""

    def ang(a, b, c):
        e1 = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
        e2 = (c[0] - a[0], c[1] - a[1], c[2] - a[2])
        d = math.sqrt((e1[0] ** 2 + e1[1] ** 2 + e1[2] ** 2) * (e2[0] ** 2 + e2[1] ** 2 + e2[2] ** 2))
        if d == 0:
            return 0.0
        cos = (e1[0] * e2[0] + e1[1] * e2[1] + e1[2] * e2[2]) / d
        return math.degrees(math.acos(max(-1.0, min(1.0, cos))))

    return min(ang(p0, p1, p2), ang(p1, p2, p0), ang(p2, p0, p1))


def _face_min_angles(verts, faces) -> np.ndarray:
    corners = verts[faces]
    out = np.full(len(faces), 180.0)
    for k in range(3):
        e1 = corners[:, (k + 1) % 3] - corners[:, k]
        e2 = corners[:, (k + 2) % 3] - corners[:, k]
        d = np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1)
        cos = np.divide((e1 * e2).sum(axis=1), d, out=np.ones(len(d)), where=d > 0)
        out = np.minimum(out, np.degrees(np.arccos(np.clip(cos, -1, 1))))
    return out


def relieve_junction_fans(verts, faces, labels, edge_um: float, min_angle_deg: float = 20.0, passes: int = 3):
    """Flip edges around junction vertices where their fans are crowded with thin triangles.

    The patch-wise remesher cannot collapse or (apparently) flip enough edges that end on the
    fixed junction lines, so a junction vertex can keep a fan of thin triangles. Each interior
    edge (j, a) of a patch, with j on a junction and both its faces in the patch, is flipped to
    the other diagonal of its quad when that raises the smaller of the two triangles' smallest
    angles, the quad stays unfolded and the new edge does not exist yet. Flips move no vertex.
    """
    lab = labels.astype(np.int64)
    patch = lab[:, 0] * (int(lab.max()) + 1) + lab[:, 1]
    junction = _junction_edges(faces, patch)
    if len(junction) == 0:
        return verts, faces, labels
    on_junction = np.zeros(len(verts), dtype=bool)
    on_junction[junction.reshape(-1)] = True
    faces = faces.copy()
    pts = verts.tolist()
    for _ in range(passes):
        checkpoint()
        face_min = _face_min_angles(verts, faces)
        # directed edge (a, b) -> face; an interior patch edge has both directions in one patch
        half, uses = {}, {}
        # every face around an edge that ends on a junction contains that junction vertex
        near = np.flatnonzero(on_junction[faces].any(axis=1))
        for fi, (x, y, z) in zip(near.tolist(), faces[near].tolist()):
            for e in ((x, y), (y, z), (z, x)):
                half[e] = fi
                key = (min(e), max(e))
                uses[key] = uses.get(key, 0) + 1
        n_v = len(verts)
        e_all = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        edge_keys = set((e_all[:, 0] * n_v + e_all[:, 1]).tolist())  # every edge of the mesh
        flips = 0
        touched = set()
        for (a, b), f1 in list(half.items()):
            if not (on_junction[a] or on_junction[b]) or uses.get((min(a, b), max(a, b))) != 2:
                continue  # only edges at a junction vertex, used by exactly two faces
            f2 = half.get((b, a))
            if f2 is None or f1 in touched or f2 in touched or patch[f1] != patch[f2]:
                continue
            old = min(face_min[f1], face_min[f2])
            if old >= min_angle_deg:
                continue
            c = next(x for x in faces[f1].tolist() if x != a and x != b)  # f1 = (a, b, c)
            d = next(x for x in faces[f2].tolist() if x != a and x != b)  # f2 = (b, a, d)
            if c == d or min(c, d) * n_v + max(c, d) in edge_keys:
                continue
            pa, pb, pc, pd = pts[a], pts[b], pts[c], pts[d]
            new = min(_min_angle(pa, pd, pc), _min_angle(pd, pb, pc))  # (a, d, c), (d, b, c)
            if new <= old + 1.0:
                continue
            va, vb, vc, vd = verts[a], verts[b], verts[c], verts[d]
            n_old = np.cross(vb - va, vc - va) + np.cross(va - vb, vd - vb)
            if np.dot(np.cross(vd - va, vc - va), n_old) <= 0 or np.dot(np.cross(vb - vd, vc - vd), n_old) <= 0:
                continue  # the quad is folded: flipping would turn a face over
            faces[f1] = (a, d, c)
            faces[f2] = (d, b, c)
            edge_keys.discard(min(a, b) * n_v + max(a, b))
            edge_keys.add(min(c, d) * n_v + max(c, d))
            touched.update((f1, f2))
            flips += 1
        if flips == 0:
            break
    return verts, faces, labels


def resample_junctions(verts: np.ndarray, faces: np.ndarray, labels: np.ndarray, edge_um: float):
    """Split long and collapse short junction edges (see the module docstring).

    ``faces``/``labels`` must be consistently wound per patch (after ``orient_outward``).
    Returns new (verts, faces, labels); unused vertices may remain.
    """
    patch = labels[:, 0].astype(np.int64) * (int(labels.max()) + 1) + labels[:, 1]
    verts, faces, labels, patch = _split_long(verts, faces, labels, patch, 4.0 / 3.0 * edge_um)
    for _ in range(3):
        n_before = len(faces)
        verts, faces, labels, patch = _collapse_short(verts, faces, labels, patch, 0.8 * edge_um, 4.0 / 3.0 * edge_um)
        if len(faces) == n_before:
            break
    return verts, faces, labels
