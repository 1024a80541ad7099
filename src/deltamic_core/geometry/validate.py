"""Checks that keep a measurement from being silently wrong (issue 10, cases 5 and 6).

- :func:`prepare_cells`: an unlabelled mesh is split into its connected components, one cell
  each; every cell surface must be closed, labelled or not (small holes, up to
  :data:`MAX_HOLE_EDGES` edges and :data:`MAX_HOLE_AREA_FRACTION` of the surface, are filled
  and the repair is reported; anything else is refused); cells must not overlap (a vertex of
  one cell strictly inside another is refused). A labelled cell is closed when every edge has
  as many faces running one way as the other once wound outward: an edge where four faces
  meet (a pinch, as in the bundled embryo) still bounds an exact volume.
- :func:`check_seed_radii` refuses seeds smaller than about a voxel;
  :func:`shrink_overlapping_seeds` shrinks overlapping seed spheres until they touch and says
  how many (the one rule used by the command line and by seeds clicked in napari).
- :func:`check_fit_cost`: seeds per voxel and faces per voxel, refused with the figure before
  any work starts.

Every refusal is a ``ValueError`` in the user's terms (cells, seeds, voxels).
"""

from __future__ import annotations

import numpy as np

from ..mesh import Mesh

__all__ = [
    "prepare_cells",
    "check_seed_radii",
    "shrink_overlapping_seeds",
    "check_fit_cost",
    "MIN_VOXELS_PER_SEED",
    "MAX_FACES_PER_VOXEL",
    "total_area",
]

# a cell must span a few voxels (3 x 3 x 3) to be measured at all
MIN_VOXELS_PER_SEED = 27
# the fit's cost grows with faces x band frequencies; a mesh finer than the voxel grid only
# costs time (its detail is below the image's resolution)
MAX_FACES_PER_VOXEL = 2.0


def total_area(mesh: Mesh) -> float:
    v, f = np.asarray(mesh.verts, float), np.asarray(mesh.faces)
    if len(f) == 0:
        return 0.0
    return float(0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum())


def _open_edges(faces: np.ndarray, n_verts: int) -> int:
    """Number of edges not shared by exactly two faces (0 for a closed 2-manifold surface)."""
    if len(faces) == 0:
        return 0
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e.sort(axis=1)
    key = e[:, 0].astype(np.int64) * int(n_verts) + e[:, 1]
    _, counts = np.unique(key, return_counts=True)
    return int(np.count_nonzero(counts != 2))


def _cell_faces(mesh: Mesh, cell: int) -> np.ndarray:
    lab = mesh.labels
    sel = (lab[:, 0] == cell) | (lab[:, 1] == cell)
    return np.asarray(mesh.faces)[sel]


def prepare_cells(mesh: Mesh, *, what: str = "mesh", repair: bool = True) -> tuple[Mesh, list[str]]:
    """Cells ready to measure or fit: split, closed, not overlapping.

    Parameters
    ----------
    mesh : Mesh
        Unlabelled (every connected component becomes a cell 1..n, in order of first face) or
        labelled (each cell's faces must form a closed surface; a small hole is filled, labelled
        with the neighbour that has the same hole, else with the outside).
    what : str
        How to name the mesh in messages (e.g. ``"--init mesh 'a.ply'"``).
    repair : bool
        Fill small holes of open surfaces when that closes them (reported in the notes).

    Returns
    -------
    (mesh, notes): the labelled mesh and one line per thing done (split, repaired).

    Raises
    ------
    ValueError
        An open surface that cannot be repaired, overlapping or nested cells, a cell of zero
        volume.
    """
    import trimesh

    notes: list[str] = []
    verts = np.asarray(mesh.verts, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if mesh.labels is not None:
        out, filled = _close_labelled_cells(mesh, what, repair)
        if filled:
            notes.append(
                f"{what}: closed {sum(filled.values())} small hole(s) in the surface of cell(s) "
                + ", ".join(str(c) for c in sorted(filled))
            )
        verts = np.asarray(out.verts, dtype=np.float64)
        cells = [(c, _cell_faces(out, c)) for c in [int(c) for c in np.unique(out.labels) if c != 0]]
    else:
        tm = trimesh.Trimesh(verts, faces, process=True)  # merges coincident vertices (seams)
        parts = _components(np.asarray(tm.vertices), np.asarray(tm.faces))
        pieces = []
        repaired = 0
        for i, (pv, pf) in enumerate(parts, start=1):
            p = trimesh.Trimesh(pv, pf, process=False)
            if _open_edges(np.asarray(p.faces), len(p.vertices)):
                problem = "it cannot be repaired"
                if repair:
                    trimesh.repair.fix_winding(p)
                    try:
                        holes = _fill_small_holes(np.asarray(p.vertices), np.asarray(p.faces))
                    except _Unrepairable as exc:
                        problem = str(exc)
                    else:
                        new = [np.asarray(p.faces)] + [t for _, t in holes]
                        p = trimesh.Trimesh(np.asarray(p.vertices), np.concatenate(new), process=False)
                if _open_edges(np.asarray(p.faces), len(p.vertices)):
                    raise ValueError(
                        f"{what}: component {i} of {len(parts)} is an open surface "
                        f"({_open_edges(np.asarray(p.faces), len(p.vertices))} boundary edges) that could not be "
                        f"closed ({problem}): a cell must be a closed surface"
                    )
                repaired += 1
            pieces.append(p)
        if repaired:
            notes.append(f"{what}: closed the holes of {repaired} open surface(s)")
        if len(pieces) > 1:
            notes.append(f"{what}: {len(pieces)} separate closed surfaces, taken as {len(pieces)} cells")
        from .ops import merge_meshes

        cell_meshes = []
        for p in pieces:
            v, f = np.asarray(p.vertices, np.float64), np.asarray(p.faces, np.int64)
            cell_meshes.append(Mesh(v, f))
        out = merge_meshes(cell_meshes) if len(cell_meshes) > 1 else _single(cell_meshes[0])
        out.metadata = dict(mesh.metadata or {})
        cells = [(c, _cell_faces(out, c)) for c in range(1, len(cell_meshes) + 1)]
        verts = np.asarray(out.verts)
    # zero-volume cells and overlaps
    tms = []
    for c, f in cells:
        t = trimesh.Trimesh(verts, f, process=False)
        t.remove_unreferenced_vertices()
        vol = abs(float(t.volume)) if len(t.faces) else 0.0
        ext = float(np.ptp(t.vertices, axis=0).max()) if len(t.vertices) else 0.0
        if not vol > 1e-9 * max(ext, 1e-12) ** 3 or not vol > 0:
            raise ValueError(f"{what}: cell {c} encloses no volume (degenerate surface)")
        tms.append((c, t))
    if len(tms) > 1 and mesh.labels is None:
        _check_no_overlap(tms, what)
    return out, notes


#: a hole is "small" (filled and reported, not refused) when its boundary has at most this
#: many edges and its fill is at most this fraction of the cell's surface area
MAX_HOLE_EDGES = 8
MAX_HOLE_AREA_FRACTION = 0.02


class _Unrepairable(ValueError):
    pass


def _edge_balance(faces: np.ndarray, n_verts: int) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges (a < b) of oriented faces and their net count (a->b minus b->a).

    A closed oriented surface has net 0 on every edge, also where more than two faces meet
    (a pinch: the divergence theorem still gives the exact volume)."""
    d = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    lo, hi = d.min(axis=1), d.max(axis=1)
    key = lo * int(n_verts) + hi
    u, inv = np.unique(key, return_inverse=True)
    net = np.zeros(len(u), np.int64)
    np.add.at(net, inv, np.where(d[:, 0] < d[:, 1], 1, -1))
    return np.stack([u // n_verts, u % n_verts], axis=1), net


def _boundary_loops(faces: np.ndarray, n_verts: int) -> list[list[int]]:
    """Holes of an oriented surface as vertex loops, in the direction of the faces' edges."""
    edges, net = _edge_balance(faces, n_verts)
    if np.any(np.abs(net) > 1):
        raise _Unrepairable("edges shared by faces of the same orientation")
    b = edges[net != 0]
    fwd = net[net != 0] > 0
    src = np.where(fwd, b[:, 0], b[:, 1])
    dst = np.where(fwd, b[:, 1], b[:, 0])
    nxt: dict[int, int] = {}
    for a, c in zip(src.tolist(), dst.tolist()):
        if a in nxt:
            raise _Unrepairable("holes that touch each other")
        nxt[a] = c
    loops = []
    while nxt:
        start, loop = next(iter(nxt)), []
        v = start
        while v in nxt:
            loop.append(v)
            v = nxt.pop(v)
        if v != start:
            raise _Unrepairable("a boundary that does not close into a loop")
        loops.append(loop)
    return loops


def _fill_small_holes(verts: np.ndarray, faces: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
    """(hole loop, faces closing it) for every hole of an oriented surface, or :class:`_Unrepairable`.

    Each hole (at most :data:`MAX_HOLE_EDGES` edges) gets a fan of triangles from one of its
    corners (fill_holes' fan, wound like the surrounding faces); the corner whose fan folds
    least is used, and a hole where every fan folds over itself is not filled; the fill of all
    holes together must stay below :data:`MAX_HOLE_AREA_FRACTION` of the surface's area.
    """
    v = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64)
    out = []
    for loop in _boundary_loops(faces, len(v)):
        if len(loop) > MAX_HOLE_EDGES:
            raise _Unrepairable(f"it has a hole of {len(loop)} edges, more than the {MAX_HOLE_EDGES} that are filled")
        best = None
        for k in range(len(loop)):
            ring = loop[k:] + loop[:k]
            tri = np.array([[ring[0], ring[i + 1], ring[i]] for i in range(1, len(ring) - 1)], np.int64)
            nrm = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
            tot = nrm.sum(axis=0)
            score = float((nrm @ tot).min() / max(float(tot @ tot), 1e-300))
            if best is None or score > best[0]:
                best = (score, tri)
        if best[0] <= 0:
            raise _Unrepairable(f"it has a hole of {len(loop)} edges that is not flat enough to fill")
        out.append((loop, best[1]))
    area = total_area(Mesh(v, faces))
    fill = sum(total_area(Mesh(v, t)) for _, t in out)
    if fill > MAX_HOLE_AREA_FRACTION * area:
        raise _Unrepairable(
            f"its holes are {100 * fill / max(area, 1e-300):.2g}% of its surface, more than the "
            f"{100 * MAX_HOLE_AREA_FRACTION:g}% that are filled"
        )
    return out


def _outward_faces(mesh: Mesh, c: int) -> np.ndarray:
    """Cell c's faces wound outward (mesh oriented by :func:`~.ops.orient_outward`)."""
    lab, f = mesh.labels, np.asarray(mesh.faces)
    return np.concatenate([f[lab[:, 0] == c], f[lab[:, 1] == c][:, [0, 2, 1]]])


def _open_edge_keys(faces: np.ndarray, n: int) -> set[int]:
    edges, net = _edge_balance(faces, n)
    return set((edges[net != 0] @ np.array([n, 1])).tolist())


def _close_labelled_cells(mesh: Mesh, what: str, repair: bool) -> tuple[Mesh, dict[int, int]]:
    """A labelled mesh whose every cell surface is closed (net 0 on every edge).

    Small holes are filled (:func:`_fill_small_holes`); the fill of a hole is labelled with the
    neighbouring cell when the neighbour has the same hole (a missing patch of a shared
    interface), else with the outside. Returns the mesh (unchanged when nothing was open) and
    {cell: holes filled}."""
    from .ops import orient_outward

    ids = [int(c) for c in np.unique(mesh.labels) if c != 0]
    oriented = orient_outward(mesh)
    n = len(oriented.verts)
    filled: dict[int, int] = {}
    for c in ids:
        f = _outward_faces(oriented, c)
        n_open = len(_open_edge_keys(f, n))
        if not n_open:
            continue
        problem = "it cannot be repaired"
        if repair:
            try:
                holes = _fill_small_holes(oriented.verts, f)
            except _Unrepairable as exc:
                problem = str(exc)
            else:
                others = {d: _open_edge_keys(_outward_faces(oriented, d), n) for d in ids if d != c}
                faces, labels = [oriented.faces], [oriented.labels]
                for loop, tri in holes:
                    ring = {min(a, b) * n + max(a, b) for a, b in zip(loop, loop[1:] + loop[:1])}
                    # normal from c into d: the fan is wound outward from c
                    d = next((d for d, keys in others.items() if ring <= keys), 0)
                    faces.append(tri)
                    labels.append(np.tile(np.array([[c, d]], np.int32), (len(tri), 1)))
                oriented = oriented.copy(faces=np.concatenate(faces), labels=np.concatenate(labels))
                if not _open_edge_keys(_outward_faces(oriented, c), n):
                    filled[c] = len(holes)
                    continue
                problem = "filling its holes did not close it"
        raise ValueError(
            f"{what}: the surface of cell {c} is not closed ({n_open} open edges) and {problem}: "
            "its volume and sphericity would be wrong"
        )
    return (oriented if filled else mesh), filled


def _components(v: np.ndarray, f: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components (through shared vertices), in order of their first face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(v)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    face_comp = comp[f[:, 0]]
    order = list(dict.fromkeys(face_comp.tolist()))
    out = []
    for c in order:
        ff = f[face_comp == c]
        used = np.unique(ff)
        remap = np.full(n, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        out.append((v[used], remap[ff]))
    return out


def _single(m: Mesh) -> Mesh:
    from .ops import merge_meshes

    return merge_meshes([m])


def _check_no_overlap(tms, what: str) -> None:
    lo = np.array([t.bounds[0] for _, t in tms])
    hi = np.array([t.bounds[1] for _, t in tms])
    for i in range(len(tms)):
        for j in range(len(tms)):
            if i == j or np.any(lo[i] > hi[j]) or np.any(hi[i] < lo[j]):
                continue
            ci, ti = tms[i]
            cj, tj = tms[j]
            pts = ti.vertices
            box = np.all((pts >= lo[j]) & (pts <= hi[j]), axis=1)
            if not box.any():
                continue
            wn = _winding_inside(tj, pts[box])
            if wn.any():
                raise ValueError(
                    f"{what}: cells {ci} and {cj} overlap (surface {ci} lies partly inside "
                    f"surface {cj}): their volumes would be counted twice"
                )


def _winding_inside(t, pts) -> np.ndarray:
    try:
        import gpytoolbox

        w = gpytoolbox.winding_number(
            np.asarray(pts, float), np.asarray(t.vertices, float), np.asarray(t.faces, np.int32)
        )
        return np.abs(w) > 0.5
    except Exception:  # noqa: BLE001 - any failure of the fast path falls back to trimesh
        return np.asarray(t.contains(pts), bool)


def check_seed_radii(radii_um, spacing_um, *, what: str = "seed") -> None:
    """Refuse seeds whose radius is below the smallest voxel size (nothing to measure)."""
    r = np.asarray(radii_um, dtype=float).ravel()
    vox = float(np.min(spacing_um))
    small = np.flatnonzero(~(r >= vox))
    if small.size:
        i = int(small[0])
        raise ValueError(
            f"{what} {i + 1} has radius {r[i]:.3g} um, smaller than a voxel ({vox:.3g} um)"
            + (f" ({small.size} such seeds)" if small.size > 1 else "")
            + ": a cell must span a few voxels"
        )


def shrink_overlapping_seeds(centres_um, radii_um) -> tuple[np.ndarray, int]:
    """Shrink the radii of overlapping seed spheres until they touch.

    Each radius is multiplied by min over its overlapping neighbours j of d_ij / (r_i + r_j),
    so no two spheres overlap afterwards and the most overlapping pair touches. Returns
    ``(radii, number of seeds shrunk)``.
    """
    from scipy.spatial import cKDTree

    c = np.asarray(centres_um, dtype=float).reshape(-1, 3)
    r = np.asarray(radii_um, dtype=float).reshape(-1).copy()
    if len(c) < 2:
        return r, 0
    pairs = cKDTree(c).query_pairs(2.0 * float(r.max()), output_type="ndarray")
    if len(pairs) == 0:
        return r, 0
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.linalg.norm(c[i] - c[j], axis=1)
    f = d / (r[i] + r[j])
    over = f < 1.0
    factor = np.ones(len(r))
    np.minimum.at(factor, i[over], f[over])
    np.minimum.at(factor, j[over], f[over])
    n = int(np.count_nonzero(factor < 1.0))
    return r * factor, n


def check_fit_cost(shape, *, n_seeds: int | None = None, n_faces: int | None = None) -> None:
    """Refuse a fit whose cells are smaller than the voxel grid can hold (before any work).

    ``n_seeds`` cells need at least :data:`MIN_VOXELS_PER_SEED` voxels each; a mesh may have at
    most :data:`MAX_FACES_PER_VOXEL` triangles per voxel.
    """
    n_vox = int(np.prod([int(s) for s in shape[-3:]]))
    if n_seeds is not None and n_seeds * MIN_VOXELS_PER_SEED > n_vox:
        raise ValueError(
            f"{n_seeds} cells in an image of {n_vox} voxels is {n_vox / n_seeds:.3g} voxels per cell; "
            f"each cell needs at least {MIN_VOXELS_PER_SEED} (3 x 3 x 3): too many seeds for this image"
        )
    if n_faces is not None and n_faces > MAX_FACES_PER_VOXEL * n_vox:
        raise ValueError(
            f"the mesh has {n_faces} triangles for {n_vox} voxels ({n_faces / n_vox:.3g} per voxel, "
            f"at most {MAX_FACES_PER_VOXEL:g}): its detail is finer than the image; use fewer cells "
            "or a coarser mesh (a longer edge length)"
        )


#: a Gaussian PSF narrower than this fraction of a voxel is not resolved by the image (and the
#: exact render of it needs a very oversampled band: the fit would crawl)
MIN_SIGMA_VOXELS = 0.25


def check_psf_width(sigma_um, spacing_um, *, what: str = "the PSF sigma") -> None:
    """Refuse a Gaussian PSF narrower than :data:`MIN_SIGMA_VOXELS` voxels on some axis."""
    s = np.broadcast_to(np.asarray(sigma_um, dtype=float), (3,))
    sp = np.asarray(spacing_um, dtype=float)
    bad = [a for a, si, d in zip("zyx", s, sp) if not si >= MIN_SIGMA_VOXELS * d]
    if bad:
        a = "zyx".index(bad[0])
        raise ValueError(
            f"{what} {s[a]:.3g} um on {bad[0]} is below {MIN_SIGMA_VOXELS:g} voxel "
            f"({MIN_SIGMA_VOXELS * sp[a]:.3g} um): the image cannot resolve it (use at least that)"
        )
