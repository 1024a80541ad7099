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
"""
from __future__ import annotations

import numpy as np

__all__ = ["resample_junctions"]


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


def _normal(v, f):
    return np.cross(v[f[1]] - v[f[0]], v[f[2]] - v[f[0]])


def _collapse_short(verts, faces, labels, patch, h_min, h_max):
    junction = _junction_edges(faces, patch)
    if len(junction) == 0:
        return verts, faces, labels, patch
    length = np.linalg.norm(verts[junction[:, 0]] - verts[junction[:, 1]], axis=1)
    short = junction[length < h_min]
    if len(short) == 0:
        return verts, faces, labels, patch
    verts = verts.copy()
    faces = faces.copy()
    alive = np.ones(len(faces), dtype=bool)
    jdeg = np.bincount(junction.reshape(-1), minlength=len(verts))
    corner = jdeg != 2
    involved = np.unique(short)
    vert_faces = {int(v): set() for v in involved.tolist()}
    for fi, row in enumerate(faces.tolist()):
        for v in row:
            if v in vert_faces:
                vert_faces[v].add(fi)
    merged_into = {}
    for (u, v) in short[np.argsort(length[length < h_min])].tolist():
        if u in merged_into or v in merged_into:
            continue  # an end already moved or vanished this pass
        if corner[u] and corner[v]:
            continue
        if corner[u]:
            u, v = v, u  # u (removed) must be an ordinary junction vertex
        fu, fv = vert_faces[u], vert_faces[v]
        shared = fu & fv
        if not shared:
            continue
        opposite = set()
        for fi in shared:
            opposite.update(x for x in faces[fi].tolist() if x != u and x != v)
        nbr_u = {x for fi in fu for x in faces[fi].tolist()} - {u, v}
        nbr_v = {x for fi in fv for x in faces[fi].tolist()} - {u, v}
        if nbr_u & nbr_v != opposite:
            continue  # link condition: collapsing would glue two sheets together
        target = verts[v] if corner[v] else 0.5 * (verts[u] + verts[v])
        # like Botsch-Kobbelt: never create an edge longer than the split threshold
        if np.any(np.linalg.norm(verts[list(nbr_u | nbr_v)] - target, axis=1) > h_max):
            continue
        ok = True
        changed = []
        for fi in (fu | fv) - shared:
            old = faces[fi]
            p0, p1, p2 = (target if x in (u, v) else verts[x] for x in old.tolist())
            before = _normal(verts, old)
            after = np.cross(p1 - p0, p2 - p0)
            if np.dot(before, after) <= 0 or np.linalg.norm(after) < 1e-3 * np.linalg.norm(before):
                ok = False
                break
            changed.append((fi, np.where(old == u, v, old)))
        if not ok:
            continue
        verts[v] = target
        for fi, new in changed:
            faces[fi] = new
        for fi in shared:
            alive[fi] = False
        vert_faces[v] = (fu | fv) - shared
        for fi in shared:
            for x in faces[fi].tolist():
                if x in vert_faces:
                    vert_faces[x].discard(fi)
        merged_into[u] = v
        merged_into[v] = v
    return verts, faces[alive], labels[alive], patch[alive]


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
