"""Exact doublets of two cells: three spherical caps (or a flat disc) spanning one circle.

Independent of deltamic_core's geometry code: the caps are sampled on their spheres in rings
of nearly uniform spacing and triangulated as the convex hull of the cap's points (a Delaunay
triangulation on the sphere; the hull's flat lid over the circle is dropped), or, for nearly
flat caps, as the planar Delaunay triangulation of the points projected on the circle's plane.

Frame: the symmetry axis is z (column 0 of the (z, y, x) coordinates), the triple line is the
circle of radius ``rho`` in the plane z = 0. A cap is set by the angle ``psi`` of its co-normal
on the circle, t = -cos(psi) r_hat + sin(psi) z_hat (psi = 0: flat disc; 0 < psi < pi: a cap
above the plane, on a sphere of radius rho / sin(psi) centred at z = -rho cot(psi)).

Cell 1 lies above cell 2; interfaces (0, 1) (top cap, psi1 > 0), (1, 2) (psi12) and (0, 2)
(bottom cap, psi2 < 0).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import ConvexHull, Delaunay


def young_dupre_angles(g1: float, g2: float, g12: float) -> tuple[float, float, float]:
    """Contact angles (radians) of cell 1, cell 2 and the medium for tensions (0,1), (0,2), (1,2).

    From sum gamma_i t_i = 0: the angle between co-normals i and j, opposite tension k, obeys
    g_k^2 = g_i^2 + g_j^2 + 2 g_i g_j cos(theta_ij).
    """

    def ang(gi, gj, gk):
        return math.acos((gk * gk - gi * gi - gj * gj) / (2 * gi * gj))

    cell1 = ang(g1, g12, g2)
    cell2 = ang(g2, g12, g1)
    medium = ang(g1, g2, g12)
    return cell1, cell2, medium


def _cap_points(psi, rho, h, ring):
    """Interior points of the cap of co-normal angle psi (ring excluded), on its sphere."""
    if abs(psi) < 1e-12:
        pts = []
        j = 1
        while rho - j * h > 0.5 * h:
            r = rho - j * h
            m = max(3, int(round(2 * math.pi * r / h)))
            phi = 2 * math.pi * (np.arange(m) + 0.5 * (j % 2)) / m
            pts.append(np.stack([np.zeros(m), r * np.sin(phi), r * np.cos(phi)], axis=1))
            j += 1
        pts.append(np.zeros((1, 3)))
        return np.concatenate(pts), None
    s = 1.0 if psi > 0 else -1.0
    a = abs(psi)
    radius = rho / math.sin(a)
    zc = -rho / math.tan(a)
    pts = []
    j = 1
    while a * radius - j * h > 0.5 * h:
        alpha = a - j * h / radius
        r = radius * math.sin(alpha)
        m = max(3, int(round(2 * math.pi * r / h)))
        phi = 2 * math.pi * (np.arange(m) + 0.5 * (j % 2)) / m
        z = zc + radius * math.cos(alpha)
        pts.append(np.stack([np.full(m, s * z), r * np.sin(phi), r * np.cos(phi)], axis=1))
        j += 1
    pts.append(np.array([[s * (zc + radius), 0.0, 0.0]]))
    return np.concatenate(pts), (np.array([s * zc, 0.0, 0.0]), radius)


def _triangulate(ring, interior, psi):
    pts = np.concatenate([ring, interior])
    nr = len(ring)
    if abs(psi) < math.radians(30):
        tri = Delaunay(pts[:, 1:]).simplices
    else:
        tri = ConvexHull(pts).simplices
        tri = tri[~np.all(tri < nr, axis=1)]  # drop the flat lid over the circle
    return tri


def doublet(psi1: float, psi12: float, psi2: float, *, rho: float = 5.0, n_ring: int = 48):
    """(verts (V, 3), faces (F, 3), labels (F, 2), info): the exact doublet, .rec label convention.

    ``info`` holds each interface's sphere (centre, radius) or None (flat) and the angles.
    """
    if not (0 < psi1 < math.pi and -math.pi < psi2 < 0 and psi2 < psi12 < psi1):
        raise ValueError("need 0 < psi1 < pi, -pi < psi2 < 0 and psi2 < psi12 < psi1")
    h = 2 * math.pi * rho / n_ring
    phi = 2 * math.pi * np.arange(n_ring) / n_ring
    ring = np.stack([np.zeros(n_ring), rho * np.sin(phi), rho * np.cos(phi)], axis=1)
    verts = [ring]
    faces, labels = [], []
    info = {}
    offset = n_ring
    # (psi, region below the cap, region above the cap)
    for key, psi, below, above in (((0, 1), psi1, 1, 0), ((1, 2), psi12, 2, 1), ((0, 2), psi2, 0, 2)):
        interior, sphere = _cap_points(psi, rho, h, ring)
        tri = _triangulate(ring, interior, psi)
        local = np.concatenate([ring, interior])
        glob = np.concatenate([np.arange(n_ring), offset + np.arange(len(interior))])
        f = glob[tri]
        p = local[tri]
        normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        centre = p.mean(axis=1)
        if sphere is None:
            up = np.tile([1.0, 0.0, 0.0], (len(f), 1))
        else:
            up = (centre - sphere[0]) * (1.0 if psi > 0 else -1.0)
        pos = np.einsum("ij,ij->i", normal, up) > 0
        lab = np.where(pos[:, None], [below, above], [above, below])
        faces.append(f)
        labels.append(lab)
        verts.append(interior)
        info[key] = sphere
        offset += len(interior)
    info["psi"] = {(0, 1): psi1, (1, 2): psi12, (0, 2): psi2}
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(labels).astype(np.int32), info


def doublet_from_tensions(g1: float, g2: float, g12: float, psi12: float = 0.0, **kw):
    """Exact equilibrium doublet for tensions (0,1) = g1, (0,2) = g2, (1,2) = g12."""
    c1, c2, _ = young_dupre_angles(g1, g2, g12)
    return doublet(psi12 + c1, psi12, psi12 - c2, **kw)
