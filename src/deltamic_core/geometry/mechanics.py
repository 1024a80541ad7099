"""Mechanics of a multi-cell mesh: curvatures, contact angles, surface tensions, pressures.

A labelled mesh (faces carry the two regions (l1, l2) on either side, 0 = the medium) is split
into *interfaces*: the faces of one unordered label pair (a, b), a < b. Everything here uses one
orientation convention per interface:

    the normal of interface (a, b) points from b into a (from the higher label into the lower;
    for a cell's surface facing the medium (0, c) this is the outward normal of cell c),

so that a convex cell has positive mean curvature on its free surface.

Curvature (per vertex and interface)
    Mean curvature H = (k1 + k2) / 2 (1/um) from the mean-curvature normal
    -Delta x / 2 = H n, with the Laplace-Beltrami operator of ``robust_laplacian`` (the
    intrinsic-Delaunay "tufted cover" cotangent Laplacian, well defined on the thin triangles
    and non-manifold spots of fitted meshes) over the mixed Voronoi area (gpytoolbox's mass
    matrix); Gaussian curvature
    K = k1 k2 (1/um^2) from the angle defect (gpytoolbox) over the Voronoi area (gpytoolbox
    mass matrix). Both are interior operators: on the boundary of an interface (its triple
    lines, where the Laplacian row carries the boundary co-normal term and the angle defect is
    a geodesic curvature), H and K come from a least-squares quadric (Monge patch) fitted to the
    interface's own vertices within two rings, a one-sided but second-order estimate.

Contact angles (per triple-line vertex)
    At a vertex where exactly three interfaces meet, with the junction line direction d from
    its two junction neighbours, each interface's tangent plane comes from the same quadric fit;
    its unit co-normal t_i (in the tangent plane, perpendicular to d, pointing into the
    interface) is a vector in the plane perpendicular to d. The three co-normals split that
    plane into three sectors, one per region: a region's contact angle is the sector between
    its two interfaces (the three angles sum to 360 degrees).

Tensions (Young-Dupre)
    At each triple-line point sum_i gamma_i t_i = 0. Stacking these vector equations over all
    points (each weighted by the length of junction line it represents) gives A gamma = 0,
    solved in the least-squares sense under a normalisation: the mean tension of each connected
    group of interfaces is 1 (``normalise="mean"``), or one interface is fixed to 1
    (``normalise=(a, b)``). Tensions are relative: only ratios follow from angles. The residual
    of a point is |sum_i gamma_i t_i| / mean_i gamma_i (0 = balanced).

Pressures (Laplace)
    For each interface p_b - p_a = 2 gamma_ab H_ab (H_ab the area-weighted mean curvature, with
    the normal from b into a: the region a convex interface bulges out of has the higher
    pressure), solved in the least-squares sense with the medium's pressure p_0 = 0 (or the
    lowest label of a group without medium). Pressures are in units of the tension scale per
    micrometre (mean tension 1 -> "tension units / um"); the residual of an interface is the
    fitted pressure jump minus 2 gamma H.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..mesh import Mesh
from ._junctions import _junction_edges
from .ops import face_areas, orient_outward

__all__ = [
    "MechanicsResult",
    "mechanics",
    "interface_curvature",
    "infer_tensions",
    "infer_pressures",
    "split_interfaces",
    "interface_surfaces",
    "INTERFACE_COLUMNS",
    "JUNCTION_COLUMNS",
    "CURVATURE_COLUMNS",
    "CELL_COLUMNS",
]

INTERFACE_COLUMNS = (
    "cell_a",
    "cell_b",
    "area_um2",
    "mean_curvature_per_um",
    "n_junction_points",
    "tension",
    "tension_residual",
    "pressure_a",
    "pressure_b",
    "delta_p",
    "laplace_delta_p",
    "laplace_residual",
)
CELL_COLUMNS = ("cell", "pressure")
JUNCTION_COLUMNS = (
    "region_1",
    "region_2",
    "region_3",
    "n_points",
    "length_um",
    "angle_1_deg",
    "angle_2_deg",
    "angle_3_deg",
    "angle_1_std_deg",
    "angle_2_std_deg",
    "angle_3_std_deg",
    "force_residual",
)
CURVATURE_COLUMNS = (
    "vertex",
    "cell_a",
    "cell_b",
    "z_um",
    "y_um",
    "x_um",
    "mean_curvature_per_um",
    "gaussian_curvature_per_um2",
    "on_junction",
)


@dataclass
class MechanicsResult:
    """Everything :func:`mechanics` infers, as column tables (dicts of equal-length arrays).

    Attributes
    ----------
    interfaces : dict
        One row per interface, columns :data:`INTERFACE_COLUMNS`.
    cells : dict
        One row per region (0 = medium), columns :data:`CELL_COLUMNS`.
    junctions : dict
        One row per triple line (three regions), columns :data:`JUNCTION_COLUMNS`: mean
        contact angle of each region (degrees) and its spread over the line's points.
    curvature : dict
        One row per (vertex, interface) pair, columns :data:`CURVATURE_COLUMNS`.
    vertex_mean_curvature, vertex_gaussian_curvature : (V,) arrays
        One value per mesh vertex (a junction vertex takes the value of the interface with the
        largest area around it), for vertex properties and colouring.
    face_interface : (F,) int array
        Row of ``interfaces`` each face belongs to.
    points : dict
        Per triple-line point: ``vertex``, ``position`` (J, 3), ``direction`` (J, 3),
        ``interfaces`` (J, 3) rows of ``interfaces``, ``conormals`` (J, 3, 3), ``weight`` (J,)
        um of line, ``angles_deg`` (J, 3) contact angle of ``regions`` (J, 3), ``residual``.
    residual_rms : float
        Weighted RMS of the point residuals (NaN without triple lines).
    """

    interfaces: dict
    cells: dict
    junctions: dict
    curvature: dict
    vertex_mean_curvature: np.ndarray
    vertex_gaussian_curvature: np.ndarray
    face_interface: np.ndarray
    points: dict = field(repr=False)
    residual_rms: float = float("nan")

    def rows(self, table: str) -> list[dict]:
        """Rows (list of dicts) of one table: "interfaces", "cells", "junctions", "curvature"."""
        cols = getattr(self, table)
        keys = list(cols)
        n = len(cols[keys[0]]) if keys else 0
        return [{k: _plain(cols[k][i]) for k in keys} for i in range(n)]


def _plain(v):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


# --------------------------------------------------------------------------------------------
# interfaces
# --------------------------------------------------------------------------------------------


def split_interfaces(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces wound by the module convention and the interface of every face.

    Returns ``faces`` (F, 3) with each normal from the higher label into the lower one (after
    :func:`~deltamic_core.geometry.orient_outward` repaired faces wound against their labels),
    ``pairs`` (P, 2) the interfaces' (a, b), a < b, and ``face_interface`` (F,) row of ``pairs``.
    A plain mesh is read as one cell (interface (0, 1), outward normals).
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a Mesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces")
    if mesh.labels is None:
        fixed = orient_outward(mesh)
        return fixed.faces.copy(), np.array([[0, 1]]), np.zeros(len(fixed.faces), dtype=np.int64)
    fixed = orient_outward(mesh)  # normals from lo into hi
    faces = fixed.faces[:, [0, 2, 1]].copy()  # -> from hi into lo
    lab = fixed.labels.astype(np.int64)
    if np.any(lab[:, 0] == lab[:, 1]):
        raise ValueError("some faces have the same region on both sides (labels l1 == l2)")
    key = lab[:, 0] * (int(lab.max()) + 1) + lab[:, 1]
    uniq, face_interface = np.unique(key, return_inverse=True)
    pairs = np.stack([uniq // (int(lab.max()) + 1), uniq % (int(lab.max()) + 1)], axis=1)
    return faces, pairs, face_interface.astype(np.int64)


def _vertex_normals(verts, faces):
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.divide(vn, norm, out=np.zeros_like(vn), where=norm > 0)


def _boundary_vertices(faces, n):
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    key = e[:, 0] * n + e[:, 1]
    uniq, counts = np.unique(key, return_counts=True)
    bad = uniq[counts != 2]
    out = np.zeros(n, dtype=bool)
    out[bad // n] = True
    out[bad % n] = True
    return out


def _adjacency(faces, n):
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    a = sp.csr_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    a.data[:] = 1
    return a


def _rings(adj, v, rings, min_points=8, max_rings=4):
    seen = {v}
    frontier = {v}
    r = 0
    while r < max_rings and (r < rings or len(seen) < min_points + 1):
        nxt = set()
        for u in frontier:
            nxt.update(adj.indices[adj.indptr[u] : adj.indptr[u + 1]].tolist())
        nxt -= seen
        if not nxt:
            break
        seen |= nxt
        frontier = nxt
        r += 1
    seen.discard(v)
    return np.fromiter(seen, dtype=np.int64)


def _quadric(x0, n0, pts):
    """Least-squares Monge patch h(u, w) = a u + b w + c u^2 + d u w + e w^2 through x0.

    ``n0`` is the approximate unit normal (the height axis). Returns the fitted unit normal, H
    and K (normal from the fitted gradient, H > 0 when the surface curves away from the normal,
    like a sphere with its outward normal).
    """
    helper = np.array([1.0, 0.0, 0.0]) if abs(n0[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(n0, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n0, e1)
    rel = pts - x0
    u, w, h = rel @ e1, rel @ e2, rel @ n0
    design = np.stack([u, w, u * u, u * w, w * w], axis=1)
    scale = np.sqrt(np.mean(u * u + w * w))
    if len(pts) < 5 or scale == 0:
        return n0, np.nan, np.nan
    cols = design / np.array([scale, scale, scale**2, scale**2, scale**2])
    coef, *_ = np.linalg.lstsq(cols, h, rcond=None)
    a, b, c, d, e = coef / np.array([scale, scale, scale**2, scale**2, scale**2])
    normal = n0 - a * e1 - b * e2
    normal /= np.linalg.norm(normal)
    g = 1.0 + a * a + b * b
    huu, huw, hww = 2 * c, d, 2 * e
    mean = -((1 + b * b) * huu - 2 * a * b * huw + (1 + a * a) * hww) / (2 * g**1.5)
    gauss = (huu * hww - huw * huw) / g**2
    return normal, mean, gauss


def interface_curvature(verts: np.ndarray, faces: np.ndarray, *, rings: int = 2):
    """Per-vertex mean and Gaussian curvature of one open or closed surface.

    Parameters
    ----------
    verts : (V, 3) float array, um
    faces : (F, 3) int array, consistently wound; the normal n = (v1 - v0) x (v2 - v0) sets the
        sign: H > 0 where the surface curves away from n (a sphere with outward normals has
        H = 1/R, K = 1/R^2).
    rings : int
        Neighbourhood (in rings of edges) of the quadric fits at boundary vertices.

    Returns
    -------
    mean, gauss : (V,) arrays (NaN at vertices no face uses)
    boundary : (V,) bool, vertices on the boundary (or a non-manifold edge) of the surface,
        where the values come from the quadric fit (see the module docstring).
    normals : (V,) unit vertex normals (area weighted; the fitted ones at boundary vertices).
    """
    import gpytoolbox
    import robust_laplacian

    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n = len(verts)
    used = np.zeros(n, dtype=bool)
    used[faces.reshape(-1)] = True
    normals = _vertex_normals(verts, faces)
    # robust_laplacian's own (barycentric) lumped mass is not the dual area the cotangent
    # formula needs: on an icosphere it leaves a 14% error that never shrinks under refinement;
    # the mixed Voronoi area converges (tests/test_mechanics.py).
    lap, _mass = robust_laplacian.mesh_laplacian(verts, faces)
    area = gpytoolbox.massmatrix(verts, faces.astype(np.int32), type="voronoi").diagonal()
    inv = 1.0 / np.where(area > 0, area, np.inf)
    hn = 0.5 * (lap @ verts) * inv[:, None]
    mean = np.einsum("ij,ij->i", hn, normals)
    gauss = gpytoolbox.angle_defect(verts, faces.astype(np.int32)) * inv
    boundary = _boundary_vertices(faces, n) & used
    if boundary.any():
        adj = _adjacency(faces, n)
        for v in np.flatnonzero(boundary):
            nb = _rings(adj, v, rings)
            nrm, hv, kv = _quadric(verts[v], normals[v], verts[nb])
            normals[v], mean[v], gauss[v] = nrm, hv, kv
    mean[~used] = np.nan
    gauss[~used] = np.nan
    return mean, gauss, boundary, normals


# --------------------------------------------------------------------------------------------
# triple lines
# --------------------------------------------------------------------------------------------


def _triple_points(verts, faces, face_interface, pairs, sub, rings):
    """Triple-line points: vertex, direction, the 3 interfaces, co-normals, weights, angles."""
    n = len(verts)
    n_if = len(pairs)
    inc = sp.csr_matrix((np.ones(faces.size), (faces.reshape(-1), np.repeat(face_interface, 3))), shape=(n, n_if))
    inc.data[:] = 1
    count = np.asarray(inc.sum(axis=1)).ravel()
    junction = _junction_edges(faces, face_interface)
    jdeg = np.bincount(junction.reshape(-1), minlength=n) if len(junction) else np.zeros(n, dtype=np.int64)
    jadj = sp.csr_matrix(
        (
            np.ones(2 * len(junction)),
            (np.concatenate([junction[:, 0], junction[:, 1]]), np.concatenate([junction[:, 1], junction[:, 0]])),
        ),
        shape=(n, n),
    )
    candidates = np.flatnonzero((count == 3) & (jdeg == 2))
    out = {
        k: [] for k in ("vertex", "position", "direction", "interfaces", "conormals", "weight", "regions", "angles_deg")
    }
    for v in candidates.tolist():
        ifs = inc.indices[inc.indptr[v] : inc.indptr[v + 1]]
        nb = jadj.indices[jadj.indptr[v] : jadj.indptr[v + 1]]
        d = verts[nb[1]] - verts[nb[0]]
        dn = np.linalg.norm(d)
        if dn == 0:
            continue
        d /= dn
        weight = 0.5 * (np.linalg.norm(verts[nb[0]] - verts[v]) + np.linalg.norm(verts[nb[1]] - verts[v]))
        ts = []
        ok = True
        for p in ifs.tolist():
            local = sub[p]
            lv = local["index"][v]
            nrm = local["normals"][lv]
            t = np.cross(nrm, d)
            tn = np.linalg.norm(t)
            # the direction into the interface: its faces around v, away from the line
            around = local["faces"][local["v2f"].indices[local["v2f"].indptr[lv] : local["v2f"].indptr[lv + 1]]]
            into = local["verts"][around].mean(axis=1).mean(axis=0) - verts[v]
            into -= d * (into @ d)
            if tn == 0 or np.linalg.norm(into) == 0:
                ok = False
                break
            t /= tn
            if t @ into < 0:
                t = -t
            ts.append(t)
        if not ok:
            continue
        ts = np.array(ts)
        # sectors of the plane perpendicular to d, one per region
        e1 = ts[0]
        e2 = np.cross(d, e1)
        phi = np.mod(np.arctan2(ts @ e2, ts @ e1), 2 * np.pi)
        order = np.argsort(phi)
        regions, angles = [], []
        for k in range(3):
            p, q = order[k], order[(k + 1) % 3]
            span = np.mod(phi[q] - phi[p], 2 * np.pi)
            shared = set(pairs[ifs[p]].tolist()) & set(pairs[ifs[q]].tolist())
            if len(shared) != 1:
                ok = False
                break
            regions.append(shared.pop())
            angles.append(np.degrees(span))
        if not ok:
            continue
        sort = np.argsort(regions)
        out["vertex"].append(v)
        out["position"].append(verts[v])
        out["direction"].append(d)
        out["interfaces"].append(ifs)
        out["conormals"].append(ts)
        out["weight"].append(weight)
        out["regions"].append(np.array(regions)[sort])
        out["angles_deg"].append(np.array(angles)[sort])
    shapes = {
        "vertex": (0,),
        "position": (0, 3),
        "direction": (0, 3),
        "interfaces": (0, 3),
        "conormals": (0, 3, 3),
        "weight": (0,),
        "regions": (0, 3),
        "angles_deg": (0, 3),
    }
    return {k: (np.array(val) if val else np.zeros(shapes[k])) for k, val in out.items()}


# --------------------------------------------------------------------------------------------
# force balance
# --------------------------------------------------------------------------------------------


def infer_tensions(
    interfaces: np.ndarray,
    conormals: np.ndarray,
    weights: np.ndarray,
    n_interfaces: int,
    normalise="mean",
    pairs: np.ndarray | None = None,
):
    """Relative tensions from Young-Dupre force balance at triple-line points.

    Parameters
    ----------
    interfaces : (J, 3) int, the interfaces meeting at each point
    conormals : (J, 3, 3) unit co-normals (point, interface, xyz)
    weights : (J,) length of line each point stands for
    n_interfaces : int
    normalise : "mean" or (a, b)
        Mean tension 1 in every connected group of interfaces, or tension of interface (a, b)
        (rows of ``pairs``) equal to 1 (its group; other groups: mean 1).

    Returns
    -------
    tension : (n_interfaces,) (NaN for interfaces on no triple line)
    residual : (J,) |sum gamma t| / mean gamma per point
    """
    interfaces = np.asarray(interfaces, dtype=np.int64).reshape(-1, 3)
    conormals = np.asarray(conormals, dtype=np.float64).reshape(-1, 3, 3)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    tension = np.full(n_interfaces, np.nan)
    if len(interfaces) == 0:
        return tension, np.zeros(0)
    # A: rows (point, xyz), columns interfaces
    j = len(interfaces)
    rows = (np.arange(j)[:, None, None] * 3 + np.arange(3)[None, None, :]).repeat(3, axis=1)
    cols = np.broadcast_to(interfaces[:, :, None], (j, 3, 3))
    vals = conormals * np.sqrt(weights)[:, None, None]
    a = sp.csr_matrix((vals.reshape(-1), (rows.reshape(-1), cols.reshape(-1))), shape=(3 * j, n_interfaces))
    q = (a.T @ a).toarray()
    # groups of interfaces linked through points
    src = np.concatenate([interfaces[:, 0], interfaces[:, 1], interfaces[:, 0]])
    dst = np.concatenate([interfaces[:, 1], interfaces[:, 2], interfaces[:, 2]])
    link = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_interfaces, n_interfaces))
    _, group = connected_components(link, directed=False)
    involved = np.zeros(n_interfaces, dtype=bool)
    involved[interfaces.reshape(-1)] = True
    fixed = None
    if not (isinstance(normalise, str) and normalise == "mean"):
        fixed = _find_pair(normalise, pairs)
        if not involved[fixed]:
            raise ValueError(f"interface {tuple(pairs[fixed])} is on no triple line: its tension cannot be fixed")
    for g in np.unique(group[involved]):
        idx = np.flatnonzero((group == g) & involved)
        qg = q[np.ix_(idx, idx)]
        if fixed is not None and fixed in idx:
            k = int(np.flatnonzero(idx == fixed)[0])
            rest = np.delete(np.arange(len(idx)), k)
            # minimise |A_r gamma_r + a_k|^2
            sol = np.linalg.lstsq(qg[np.ix_(rest, rest)], -qg[rest, k], rcond=None)[0]
            gam = np.empty(len(idx))
            gam[k] = 1.0
            gam[rest] = sol
        else:
            m = len(idx)
            kkt = np.zeros((m + 1, m + 1))
            kkt[:m, :m] = qg
            kkt[:m, m] = 1.0
            kkt[m, :m] = 1.0
            rhs = np.zeros(m + 1)
            rhs[m] = m
            gam = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:m]
        tension[idx] = gam
    g_pts = tension[interfaces]
    force = np.einsum("jk,jkx->jx", g_pts, conormals)
    residual = np.linalg.norm(force, axis=1) / np.abs(g_pts.mean(axis=1))
    return tension, residual


def _apply_known(tension, point_interfaces, pairs, known):
    tension = tension.copy()
    n_if = len(pairs)
    idx = {}
    for pair, value in dict(known).items():
        value = float(value)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"known tension of interface {pair} must be positive, got {value}")
        idx[_find_pair(pair, pairs)] = value
    if len(point_interfaces):
        src = np.concatenate([point_interfaces[:, 0], point_interfaces[:, 1]])
        dst = np.concatenate([point_interfaces[:, 1], point_interfaces[:, 2]])
        link = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_if, n_if))
        _, group = connected_components(link, directed=False)
    else:
        group = np.arange(n_if)
    for g in np.unique(group[list(idx)]):
        members = [i for i in idx if group[i] == g and np.isfinite(tension[i])]
        if members:
            g_in = np.array([tension[i] for i in members])
            g_kn = np.array([idx[i] for i in members])
            tension[group == g] *= float(g_in @ g_kn / (g_in @ g_in))
    for i, value in idx.items():
        if not np.isfinite(tension[i]):
            tension[i] = value
    return tension


def _find_pair(pair, pairs):
    if pairs is None:
        raise ValueError("normalise=(a, b) needs the interface table")
    try:
        a, b = sorted(int(x) for x in pair)
    except (TypeError, ValueError):
        raise ValueError(f"normalise must be 'mean' or a pair of region labels (a, b), got {pair!r}") from None
    hit = np.flatnonzero((pairs[:, 0] == a) & (pairs[:, 1] == b))
    if len(hit) == 0:
        raise ValueError(f"there is no interface between regions {a} and {b} in the mesh")
    return int(hit[0])


def infer_pressures(pairs: np.ndarray, tension: np.ndarray, mean_curvature: np.ndarray, area: np.ndarray):
    """Region pressures from Laplace's law p_b - p_a = 2 gamma_ab H_ab, least squares.

    ``pairs`` (P, 2) a < b, H with the normal from b into a. The medium (0) has pressure 0; a
    group of regions not touching the medium has its lowest label at 0. Interfaces with a NaN
    tension are left out. Returns ``regions``, ``pressure`` (per region; NaN where no interface
    with a known tension touches it) and ``residual`` (P,) = (p_b - p_a) - 2 gamma H.
    """
    regions = np.unique(pairs)
    index = {int(r): i for i, r in enumerate(regions)}
    ok = np.isfinite(tension) & np.isfinite(mean_curvature)
    pressure = np.full(len(regions), np.nan)
    residual = np.full(len(pairs), np.nan)
    if not ok.any():
        return regions, pressure, residual
    ia = np.array([index[int(a)] for a in pairs[ok, 0]])
    ib = np.array([index[int(b)] for b in pairs[ok, 1]])
    link = sp.csr_matrix((np.ones(len(ia)), (ia, ib)), shape=(len(regions),) * 2)
    _, group = connected_components(link, directed=False)
    touched = np.zeros(len(regions), dtype=bool)
    touched[ia] = touched[ib] = True
    w = np.sqrt(np.maximum(area[ok], 1e-300))
    rhs = 2.0 * tension[ok] * mean_curvature[ok]
    mat = np.zeros((len(ia), len(regions)))
    mat[np.arange(len(ia)), ib] = 1.0
    mat[np.arange(len(ia)), ia] = -1.0
    mat *= w[:, None]
    b = rhs * w
    extra = []
    for g in np.unique(group[touched]):
        members = np.flatnonzero((group == g) & touched)
        ref = members[0]  # regions are sorted: 0 (the medium) first when present
        row = np.zeros(len(regions))
        row[ref] = 1.0 * max(1.0, np.abs(mat).max())
        extra.append(row)
    mat = np.vstack([mat] + extra)
    b = np.concatenate([b, np.zeros(len(extra))])
    sol = np.linalg.lstsq(mat, b, rcond=None)[0]
    pressure[touched] = sol[touched]
    residual[ok] = (sol[ib] - sol[ia]) - rhs
    return regions, pressure, residual


# --------------------------------------------------------------------------------------------
# the whole analysis
# --------------------------------------------------------------------------------------------


def mechanics(mesh: Mesh, *, normalise="mean", known_tensions: dict | None = None, rings: int = 2) -> MechanicsResult:
    """Curvatures, contact angles, relative tensions and pressures of a labelled mesh.

    Parameters
    ----------
    mesh : Mesh
        Multi-cell mesh in um with per-face labels (a plain closed mesh is one cell: its
        curvature is computed, tensions need triple lines and stay NaN).
    normalise : "mean" or (a, b)
        Tension normalisation (see :func:`infer_tensions`).
    known_tensions : dict {(a, b): tension}, optional
        Measured tensions (any unit): each group of interfaces linked by triple lines that
        contains one is scaled to match them (least squares), and an interface on no triple
        line (a lone droplet or cell) takes its value, so that pressures come out in the
        tension's unit per um (e.g. mN/m / um = kPa).
    rings : int
        Neighbourhood of the boundary quadric fits.

    See the module docstring for the conventions and methods.
    """
    if rings < 1:
        raise ValueError(f"rings must be >= 1, got {rings}")
    faces, pairs, face_if = split_interfaces(mesh)
    verts = mesh.verts
    n = len(verts)
    areas = face_areas(verts, faces)
    n_if = len(pairs)
    sub = []
    cur_rows = {k: [] for k in CURVATURE_COLUMNS}
    best_area = np.zeros(n)
    v_mean = np.full(n, np.nan)
    v_gauss = np.full(n, np.nan)
    if_area = np.zeros(n_if)
    if_mean = np.full(n_if, np.nan)
    junction = _junction_edges(faces, face_if)
    on_junction = np.zeros(n, dtype=bool)
    if len(junction):
        on_junction[junction.reshape(-1)] = True
    for p in range(n_if):
        sel = np.flatnonzero(face_if == p)
        f = faces[sel]
        used = np.unique(f)
        index = np.full(n, -1)
        index[used] = np.arange(len(used))
        lf = index[f]
        lv = verts[used]
        hm, kg, _boundary, normals = interface_curvature(lv, lf, rings=rings)
        v2f = sp.csr_matrix(
            (np.ones(lf.size), (lf.reshape(-1), np.repeat(np.arange(len(lf)), 3))), shape=(len(used), len(lf))
        )
        sub.append({"index": index, "faces": lf, "verts": lv, "normals": normals, "v2f": v2f})
        vertex_area = np.asarray(v2f @ areas[sel]).ravel() / 3.0
        if_area[p] = areas[sel].sum()
        good = np.isfinite(hm)
        if good.any():
            if_mean[p] = np.sum(hm[good] * vertex_area[good]) / np.sum(vertex_area[good])
        take = vertex_area > best_area[used]
        best_area[used[take]] = vertex_area[take]
        v_mean[used[take]] = hm[take]
        v_gauss[used[take]] = kg[take]
        cur_rows["vertex"].append(used)
        cur_rows["cell_a"].append(np.full(len(used), pairs[p, 0]))
        cur_rows["cell_b"].append(np.full(len(used), pairs[p, 1]))
        cur_rows["z_um"].append(lv[:, 0])
        cur_rows["y_um"].append(lv[:, 1])
        cur_rows["x_um"].append(lv[:, 2])
        cur_rows["mean_curvature_per_um"].append(hm)
        cur_rows["gaussian_curvature_per_um2"].append(kg)
        cur_rows["on_junction"].append(on_junction[used])
    curvature = {k: np.concatenate(v) for k, v in cur_rows.items()}

    pts = _triple_points(verts, faces, face_if, pairs, sub, rings)
    tension, residual = infer_tensions(
        pts["interfaces"], pts["conormals"], pts["weight"], n_if, normalise=normalise, pairs=pairs
    )
    if known_tensions:
        tension = _apply_known(tension, pts["interfaces"], pairs, known_tensions)
    pts["residual"] = residual
    regions, pressure, lap_res = infer_pressures(pairs, tension, if_mean, if_area)
    p_of = dict(zip(regions.tolist(), pressure.tolist()))
    pa = np.array([p_of[int(a)] for a in pairs[:, 0]])
    pb = np.array([p_of[int(b)] for b in pairs[:, 1]])
    n_pts = (
        np.bincount(pts["interfaces"].reshape(-1).astype(np.int64), minlength=n_if)
        if len(residual)
        else np.zeros(n_if, int)
    )
    t_res = np.full(n_if, np.nan)
    for p in range(n_if):
        hit = np.any(pts["interfaces"] == p, axis=1) if len(residual) else np.zeros(0, bool)
        if hit.any():
            w = pts["weight"][hit]
            t_res[p] = np.sqrt(np.sum(w * residual[hit] ** 2) / np.sum(w))
    interfaces = {
        "cell_a": pairs[:, 0].copy(),
        "cell_b": pairs[:, 1].copy(),
        "area_um2": if_area,
        "mean_curvature_per_um": if_mean,
        "n_junction_points": n_pts,
        "tension": tension,
        "tension_residual": t_res,
        "pressure_a": pa,
        "pressure_b": pb,
        "delta_p": pb - pa,
        "laplace_delta_p": 2.0 * tension * if_mean,
        "laplace_residual": lap_res,
    }
    cells = {"cell": regions, "pressure": pressure}
    junctions = _junction_table(pts, verts)
    rms = float(np.sqrt(np.sum(pts["weight"] * residual**2) / np.sum(pts["weight"]))) if len(residual) else float("nan")
    return MechanicsResult(
        interfaces=interfaces,
        cells=cells,
        junctions=junctions,
        curvature=curvature,
        vertex_mean_curvature=v_mean,
        vertex_gaussian_curvature=v_gauss,
        face_interface=face_if,
        points=pts,
        residual_rms=rms,
    )


def _junction_table(pts, verts):
    cols = {k: [] for k in JUNCTION_COLUMNS}
    if len(pts["vertex"]):
        keys, inverse = np.unique(pts["regions"], axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        for g, key in enumerate(keys):
            hit = inverse == g
            w = pts["weight"][hit]
            ang = pts["angles_deg"][hit]
            mean = (w[:, None] * ang).sum(axis=0) / w.sum()
            std = np.sqrt((w[:, None] * (ang - mean) ** 2).sum(axis=0) / w.sum())
            for k in range(3):
                cols[f"region_{k + 1}"].append(int(key[k]))
                cols[f"angle_{k + 1}_deg"].append(mean[k])
                cols[f"angle_{k + 1}_std_deg"].append(std[k])
            cols["n_points"].append(int(hit.sum()))
            cols["length_um"].append(float(w.sum()))
            cols["force_residual"].append(float(np.sqrt(np.sum(w * pts["residual"][hit] ** 2) / w.sum())))
    return {k: np.asarray(v) for k, v in cols.items()}


def interface_surfaces(mesh: Mesh, result: MechanicsResult | None = None) -> dict:
    """The mesh split along its triple lines, one vertex copy per interface, for display.

    Each interface keeps its own copy of the junction vertices, so values that differ between
    interfaces (curvature, tension) colour each interface exactly. Vertex ``i`` of the result is
    row ``i`` of ``result.curvature``.

    Returns a dict: ``verts`` (N, 3), ``faces`` (F, 3) wound by the module convention,
    ``vertex`` (N,) index into ``mesh.verts``, ``cell_a``/``cell_b`` (N,), ``mean_curvature``,
    ``gaussian_curvature``, ``tension`` (N,) and ``face_interface`` (F,).
    """
    if result is None:
        result = mechanics(mesh)
    faces, pairs, face_if = split_interfaces(mesh)
    cur = result.curvature
    rows_a, rows_b = cur["cell_a"], cur["cell_b"]
    new_faces = np.empty_like(faces)
    tension_of = {}
    for p, (a, b) in enumerate(pairs.tolist()):
        block = np.flatnonzero((rows_a == a) & (rows_b == b))
        tension_of[(a, b)] = result.interfaces["tension"][p]
        sel = face_if == p
        local = np.searchsorted(cur["vertex"][block], faces[sel])
        new_faces[sel] = block[local]
    tension = np.array([tension_of[(int(a), int(b))] for a, b in zip(rows_a, rows_b)])
    return {
        "verts": mesh.verts[cur["vertex"]],
        "faces": new_faces,
        "vertex": cur["vertex"].copy(),
        "cell_a": rows_a.copy(),
        "cell_b": rows_b.copy(),
        "mean_curvature": cur["mean_curvature_per_um"].copy(),
        "gaussian_curvature": cur["gaussian_curvature_per_um2"].copy(),
        "tension": tension,
        "face_interface": face_if,
    }
