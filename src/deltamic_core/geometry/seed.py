"""Initial meshes: spheres around seed points, and surfaces extracted from a label image."""

from __future__ import annotations

import numpy as np

from .._cancel import checkpoint
from .._checks import check_spacing, check_vector3
from ..mesh import Mesh
from .ops import merge_meshes, offset_to_volume, signed_volume
from .remesh import remesh
from .surface_nets import surface_nets

__all__ = ["icosphere", "seed_spheres", "meshes_from_labels"]


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive and finite, got {v}")
    return v


def _subdivisions_for(radius_um: float, edge_um: float) -> int:
    # icosahedron edge = 1.0515 R, halved by each subdivision; stop at the first level at
    # least as fine as the target so the remesher only coarsens slightly.
    s = int(np.ceil(np.log2(max(1.0515 * radius_um / edge_um, 1.0))))
    return int(np.clip(s, 1, 7))


def _unit_icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """The 12 unit vertices and 20 faces (wound outward) of a regular icosahedron."""
    phi = (1.0 + 5.0**0.5) / 2.0
    v = np.array(
        [p for a in (-1.0, 1.0) for b in (-phi, phi) for p in ((0.0, a, b), (a, b, 0.0), (b, 0.0, a))],
        dtype=np.float64,
    )  # the corners of three orthogonal golden rectangles
    # the faces: the vertex triples at mutual distance 2 (the edge of these coordinates)
    near = np.isclose(np.linalg.norm(v[:, None] - v[None], axis=2), 2.0)
    faces = np.array(
        [
            (i, j, k)
            for i in range(12)
            for j in range(i + 1, 12)
            for k in range(j + 1, 12)
            if near[i, j] and near[j, k] and near[i, k]
        ],
        dtype=np.int64,
    )
    a, b, c = (v[faces[:, k]] for k in range(3))
    inward = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) < 0
    faces[inward] = faces[inward][:, [0, 2, 1]]
    return v / np.linalg.norm(v, axis=1, keepdims=True), faces


def _split_on_sphere(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every triangle split in four at its edge midpoints, the midpoints pushed out onto the
    unit sphere (the winding is kept)."""
    n = len(verts)
    key = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    edge, inverse = np.unique(key[:, 0] * n + key[:, 1], return_inverse=True)
    mid = verts[edge // n] + verts[edge % n]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    m01, m12, m20 = n + inverse.reshape(3, -1)  # the midpoints' ids per face
    a, b, c = faces.T
    split = [(a, m01, m20), (b, m12, m01), (c, m20, m12), (m01, m12, m20)]
    return np.concatenate([verts, mid]), np.concatenate([np.stack(t, axis=1) for t in split])


def icosphere(center_um, radius_um: float, subdivisions: int = 3) -> Mesh:
    """A closed sphere mesh with outward normals (plain Mesh, no labels).

    Parameters
    ----------
    center_um : sequence of 3 floats
        Centre (z, y, x) in micrometres.
    radius_um : float
        Radius in micrometres (all vertices lie exactly on the sphere).
    subdivisions : int
        Midpoint subdivisions of the icosahedron, each projected onto the sphere:
        20 * 4**s triangles (s=3: 1280).
    """
    c = np.asarray(check_vector3(center_um, "center_um"))
    r = _positive(radius_um, "radius_um")
    s = int(subdivisions)
    if not 0 <= s <= 8:
        raise ValueError(f"subdivisions must be in [0, 8], got {subdivisions}")
    verts, faces = _unit_icosahedron()
    for _ in range(s):
        verts, faces = _split_on_sphere(verts, faces)
    if signed_volume(verts, faces) < 0:  # (wound outward by construction: a check)
        faces = faces[:, [0, 2, 1]]
    return Mesh(verts * r + c, faces, None, {"kind": "icosphere", "radius_um": r, "center_um": tuple(c)})


def seed_spheres(centers_um, radii_um, subdivisions: int = 3, *, edge_um: float | None = None) -> Mesh:
    """One closed sphere per cell, as a multi-cell Mesh with cells 1..n in seed order.

    Faces carry labels (0, cell) and are wound with their normals pointing into the cell (the
    .rec convention).

    Parameters
    ----------
    centers_um : (n, 3) array
        Centres (z, y, x) in micrometres.
    radii_um : float or (n,) array
        Radii in micrometres.
    subdivisions : int
        Icosphere subdivisions, used when ``edge_um`` is None.
    edge_um : float, optional
        Target edge length: the sphere is built fine enough and remeshed to this length.
    """
    centers = np.asarray(centers_um, dtype=np.float64)
    if centers.ndim == 1 and centers.size == 3:
        centers = centers[None]
    if centers.ndim != 2 or centers.shape[1] != 3 or len(centers) == 0:
        raise ValueError(f"centers_um must have shape (n, 3) in (z, y, x) order, got {centers.shape}")
    if not np.all(np.isfinite(centers)):
        raise ValueError("centers_um contains NaN or Inf")
    radii = (
        np.broadcast_to(np.asarray(radii_um, dtype=np.float64), (len(centers),)).copy()
        if np.ndim(radii_um) <= 1 and np.size(radii_um) in (1, len(centers))
        else None
    )
    if radii is None:
        raise ValueError(
            f"radii_um must be a number or have one value per centre ({len(centers)}), got shape {np.shape(radii_um)}"
        )
    if not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise ValueError(f"radii_um must be positive and finite, got {radii.tolist()}")
    if edge_um is not None:
        edge_um = _positive(edge_um, "edge_um")
    spheres = []
    for c, r in zip(centers, radii):
        if edge_um is None:
            spheres.append(icosphere(c, r, subdivisions))
        else:
            fine = icosphere(c, r, _subdivisions_for(r, edge_um))
            spheres.append(remesh(fine, edge_um).copy(metadata={}))
    out = merge_meshes(spheres)
    out.metadata = {"kind": "seed_spheres", "centers_um": centers.tolist(), "radii_um": radii.tolist()}
    return out


def meshes_from_labels(
    label_image, spacing_um, edge_um: float | None = None, *, smooth_voxels: float = 0.5, shared: bool = False
) -> Mesh:
    """One closed surface per label of a label image, as a multi-cell Mesh.

    Each label's binary mask (cropped to its bounding box and padded) is lightly smoothed,
    triangulated with marching cubes at level 0.5 (with ``spacing`` so vertices are in
    micrometres, in the image frame: voxel (i, j, k) has its centre at (i*sz, j*sy, k*sx)),
    then remeshed to ``edge_um`` and offset along its normals so that it encloses the label's
    voxel volume (smoothing and chords otherwise shrink cells by a few percent). Faces carry labels (0, id) with the .rec orientation, ``id``
    being the label's value (ids are kept, not renumbered). Touching cells each get their own
    closed surface (the membrane between them is duplicated, not shared).

    Parameters
    ----------
    label_image : (Z, Y, X) int array
        0 = background.
    spacing_um : float or 3 floats
        Voxel size (z, y, x) in micrometres.
    edge_um : float, optional
        Target edge length (default: twice the smallest voxel size).
    smooth_voxels : float
        Gaussian smoothing of each mask before triangulation, in voxels (0 = none: the
        surface then follows the voxel staircase).
    shared : bool
        Build one multi-material mesh instead, where the membrane between two touching cells
        is a single sheet of faces labelled (a, b) (multi-label surface nets, see
        :mod:`deltamic_core.geometry.surface_nets`), then remesh it patch by patch
        (junction lines keep their voxel-scale sampling). ``smooth_voxels`` is not used.
    """
    from scipy import ndimage
    from skimage.measure import marching_cubes

    lab = np.asarray(label_image)
    if lab.ndim != 3:
        raise ValueError(f"label_image must be a 3D (Z, Y, X) array, got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.mod(lab, 1) == 0):
            lab = lab.astype(np.int64)
        else:
            raise TypeError(f"label_image must hold integer labels, got dtype {lab.dtype}")
    spacing = np.asarray(check_spacing(spacing_um, "spacing_um"))
    edge = float(2.0 * spacing.min()) if edge_um is None else _positive(edge_um, "edge_um")
    if smooth_voxels < 0:
        raise ValueError(f"smooth_voxels must be >= 0, got {smooth_voxels}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"label_image has negative labels (min {lab.min()}); 0 is background, cells > 0")
    objects = ndimage.find_objects(lab.astype(np.int64, copy=False))
    if not any(o is not None for o in objects):
        raise ValueError("label_image contains no labels (all zero)")
    if shared:
        nets = surface_nets(lab, tuple(spacing))
        checkpoint()
        mesh = remesh(nets, edge)
        mesh.metadata = {
            "kind": "meshes_from_labels",
            "spacing_um": tuple(spacing.tolist()),
            "edge_um": edge,
            "cell_ids": [int(c) for c in mesh.cell_ids],
            "shared": True,
        }
        return mesh
    pad = 2 + int(np.ceil(3 * smooth_voxels))
    surfaces, ids = [], []
    for index, box in enumerate(objects):
        if box is None:
            continue
        checkpoint()
        cell = index + 1
        lo = np.array([b.start for b in box])
        hi = np.array([b.stop for b in box])
        mask = (lab[tuple(slice(a, b) for a, b in zip(lo, hi))] == cell).astype(np.float32)
        mask = np.pad(mask, pad)
        if smooth_voxels > 0:
            mask = ndimage.gaussian_filter(mask, smooth_voxels, mode="constant")
        if mask.max() <= 0.5:
            # too thin to survive smoothing: triangulate the raw voxels instead
            mask = np.pad((lab[tuple(slice(a, b) for a, b in zip(lo, hi))] == cell).astype(np.float32), pad)
        # Marching cubes on every voxel makes ~4x more triangles than the remesher keeps when
        # the target edge spans several voxels; a coarser step is then as good and much faster.
        step = int(np.clip(np.floor(edge / spacing.max()), 1, 4))
        if min(mask.shape) < 4 * step:
            step = 1
        verts, faces, _, _ = marching_cubes(mask, level=0.5, spacing=tuple(spacing), step_size=step)
        verts = verts.astype(np.float64) + (lo - pad) * spacing
        faces = faces.astype(np.int64)
        if signed_volume(verts, faces) < 0:
            faces = faces[:, [0, 2, 1]]
        surface = remesh(Mesh(verts, faces), edge)
        target = float(np.count_nonzero(lab[tuple(slice(a, b) for a, b in zip(lo, hi))] == cell)) * spacing.prod()
        surfaces.append(offset_to_volume(surface, target))
        ids.append(cell)
    out = merge_meshes(surfaces)
    # merge_meshes numbers cells 1..n; restore the label values
    id_map = np.concatenate([[0], ids]).astype(np.int32)
    out.labels = id_map[out.labels]
    out.metadata = {
        "kind": "meshes_from_labels",
        "spacing_um": tuple(spacing.tolist()),
        "edge_um": edge,
        "cell_ids": ids,
    }
    return out
