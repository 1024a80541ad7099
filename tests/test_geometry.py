"""deltamic_core.geometry: mesh operations, seeding, remeshing, measurements, rasterisation.

Truth comes from analytic shapes (box, tetrahedron, sphere, ellipsoid), from finite
differences, and from independent methods (voxel counting vs the divergence theorem).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import ellipeinc, ellipkinc

from deltamic_core.geometry import (
    cell_faces,
    cell_volumes,
    contact_matrix,
    contacts,
    edge_lengths,
    edges,
    face_areas,
    face_normals,
    icosphere,
    label_image,
    measure,
    merge_meshes,
    meshes_from_labels,
    min_angles,
    orient_outward,
    remesh,
    seed_spheres,
    signed_volume,
    triangle_quality,
    vertex_face_adjacency,
    volumes_by_label,
)
from deltamic_core.geometry.remesh import _boundary_edges
from deltamic_core.io import read_mesh
from deltamic_core.mesh import Mesh

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec"


def box_mesh(lo, hi) -> Mesh:
    """Closed box [lo, hi] (z, y, x), 12 triangles, outward normals."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    verts = lo + corners * (hi - lo)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        faces += [(a, b, c), (a, c, d)]
    faces = np.array(faces)
    if signed_volume(verts, faces) < 0:
        faces = faces[:, [0, 2, 1]]
    return Mesh(verts, faces)


def ellipsoid_area(a, b, c):
    """Exact surface area of an ellipsoid with semi-axes a > b > c (Legendre's formula)."""
    a, b, c = sorted((a, b, c), reverse=True)
    phi = np.arccos(c / a)
    m = (a**2 * (b**2 - c**2)) / (b**2 * (a**2 - c**2))
    return 2 * np.pi * c**2 + 2 * np.pi * a * b / np.sin(phi) * (
        ellipeinc(phi, m) * np.sin(phi) ** 2 + ellipkinc(phi, m) * np.cos(phi) ** 2
    )


@pytest.fixture(scope="module")
def embryo():
    return read_mesh(SAMPLE)


# ------------------------------------------------------------------------------------------
# elementary operations
# ------------------------------------------------------------------------------------------


def test_box_volume_area_centroid_sphericity_exact():
    box = box_mesh((1.0, -2.0, 3.0), (3.0, 1.0, 7.0))  # 2 x 3 x 4
    assert signed_volume(box.verts, box.faces) == pytest.approx(24.0, rel=1e-14)
    row = measure(box).rows()[0]
    assert row["cell"] == 1
    assert row["volume_um3"] == pytest.approx(24.0, rel=1e-14)
    assert row["area_um2"] == pytest.approx(2 * (6 + 12 + 8), rel=1e-14)
    np.testing.assert_allclose(row["centroid"], (2.0, -0.5, 5.0), atol=1e-12)
    cube = measure(box_mesh((0, 0, 0), (5, 5, 5)))
    # V = a^3, A = 6 a^2: pi^(1/3) (6 a^3)^(2/3) / (6 a^2) = (pi / 6)^(1/3)
    assert cube["sphericity"][0] == pytest.approx((np.pi / 6) ** (1 / 3), rel=1e-13)


def test_tetrahedron_centroid_far_from_origin():
    verts = np.array([[0, 0, 0], [3, 0, 0], [0, 2, 0], [0, 0, 5.0]]) + 1e5
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    tet = Mesh(verts, faces)
    row = measure(tet).rows()[0]
    assert row["volume_um3"] == pytest.approx(5.0, rel=1e-9)
    np.testing.assert_allclose(row["centroid"], verts.mean(axis=0), rtol=0, atol=1e-9)


def test_normals_and_areas_numpy_and_torch_agree():
    s = icosphere((0, 0, 0), 2.0, 2)
    a_np = face_areas(s.verts, s.faces)
    a_t = face_areas(torch.tensor(s.verts), torch.tensor(s.faces))
    np.testing.assert_allclose(a_t.numpy(), a_np, rtol=1e-14)
    n = face_normals(s.verts, s.faces)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, rtol=1e-14)
    centroids = s.verts[s.faces].mean(axis=1)
    assert np.all(np.einsum("ij,ij->i", n, centroids) > 0)  # outward on a sphere centred at 0


def test_torch_volume_gradient_matches_finite_differences():
    s = icosphere((1.0, 2.0, 3.0), 1.5, 1)
    v = torch.tensor(s.verts, requires_grad=True)
    vol = signed_volume(v, torch.tensor(s.faces))
    (grad,) = torch.autograd.grad(vol, v)
    eps = 1e-6
    rng = np.random.default_rng(0)
    for _ in range(5):
        i, k = rng.integers(len(s.verts)), rng.integers(3)
        plus, minus = s.verts.copy(), s.verts.copy()
        plus[i, k] += eps
        minus[i, k] -= eps
        fd = (signed_volume(plus, s.faces) - signed_volume(minus, s.faces)) / (2 * eps)
        # abs: the central difference's round-off (volume ~14 um^3 x 2^-52 / 2e-6 ~ 2e-9)
        assert grad[i, k].item() == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_volumes_by_label_numpy_torch_and_gradient(embryo):
    fixed = orient_outward(embryo)
    expected = cell_volumes(fixed)
    vols = volumes_by_label(fixed.verts, fixed.faces, fixed.labels)
    for c, v in expected.items():
        assert vols[c] == pytest.approx(v, rel=1e-10)
    assert vols[0] == pytest.approx(-sum(expected.values()), rel=1e-10)
    v = torch.tensor(fixed.verts, requires_grad=True)
    vt = volumes_by_label(v, torch.tensor(fixed.faces), torch.tensor(fixed.labels))
    np.testing.assert_allclose(vt.detach().numpy(), vols, rtol=1e-12)
    (grad,) = torch.autograd.grad(vt[2], v)
    i = int(fixed.faces[fixed.labels[:, 1] == 2][0, 0])  # a vertex of cell 2
    for k in range(3):
        plus, minus = fixed.verts.copy(), fixed.verts.copy()
        plus[i, k] += 1e-4
        minus[i, k] -= 1e-4
        fd = (
            volumes_by_label(plus, fixed.faces, fixed.labels)[2] - volumes_by_label(minus, fixed.faces, fixed.labels)[2]
        ) / 2e-4
        assert grad[i, k].item() == pytest.approx(fd, rel=1e-5)


def test_edges_adjacency_and_min_angles_on_icosahedron():
    ico = icosphere((0, 0, 0), 1.0, 0)
    e = edges(ico.faces)
    assert e.shape == (30, 2)
    lengths = edge_lengths(ico.verts, ico.faces)
    np.testing.assert_allclose(lengths, lengths[0], rtol=1e-12)  # all edges equal
    assert lengths[0] == pytest.approx(4 / np.sqrt(10 + 2 * np.sqrt(5)), rel=1e-12)  # edge / circumradius
    adj = vertex_face_adjacency(ico.faces, len(ico.verts))
    assert adj.shape == (12, 20)
    np.testing.assert_array_equal(np.asarray(adj.sum(axis=1)).ravel(), 5)  # valence 5
    np.testing.assert_array_equal(np.asarray(adj.sum(axis=0)).ravel(), 3)
    np.testing.assert_allclose(min_angles(ico.verts, ico.faces), 60.0, atol=1e-9)


# ------------------------------------------------------------------------------------------
# sphere / ellipsoid convergence
# ------------------------------------------------------------------------------------------


def test_icosphere_volume_and_area_converge_quadratically():
    R = 3.0
    vol_err, area_err = [], []
    for s in range(2, 6):
        row = measure(icosphere((5.0, -1.0, 2.0), R, s)).rows()[0]
        vol_err.append(abs(row["volume_um3"] - 4 / 3 * np.pi * R**3) / (4 / 3 * np.pi * R**3))
        area_err.append(abs(row["area_um2"] - 4 * np.pi * R**2) / (4 * np.pi * R**2))
        np.testing.assert_allclose(row["centroid"], (5.0, -1.0, 2.0), atol=1e-12)
    # inscribed polyhedron: error ~ h^2, h halves with each subdivision -> ratio ~4
    ratios = np.array(vol_err[:-1]) / np.array(vol_err[1:])
    assert np.all((ratios > 3.6) & (ratios < 4.4)), ratios
    ratios = np.array(area_err[:-1]) / np.array(area_err[1:])
    assert np.all((ratios > 3.6) & (ratios < 4.4)), ratios
    assert vol_err[-1] < 1e-3
    sph = measure(icosphere((0, 0, 0), R, 5))["sphericity"][0]
    assert sph == pytest.approx(1.0, abs=1e-3) and sph <= 1.0


def test_ellipsoid_volume_and_area():
    a, b, c = 5.0, 3.0, 2.0
    s = icosphere((0, 0, 0), 1.0, 5)
    ell = Mesh(s.verts * [a, b, c], s.faces)
    row = measure(ell).rows()[0]
    assert row["volume_um3"] == pytest.approx(4 / 3 * np.pi * a * b * c, rel=2e-3)
    assert row["area_um2"] == pytest.approx(ellipsoid_area(a, b, c), rel=2e-3)
    assert ellipsoid_area(4.0, 4.0 - 1e-9, 4.0 - 2e-9) == pytest.approx(4 * np.pi * 16, rel=1e-6)


# ------------------------------------------------------------------------------------------
# orientation, merging, seeding
# ------------------------------------------------------------------------------------------


def test_orient_outward_repairs_random_flips():
    s = icosphere((0, 0, 0), 1.0, 3)
    rng = np.random.default_rng(1)
    flip = rng.random(len(s.faces)) < 0.2
    broken = s.faces.copy()
    broken[flip] = broken[flip][:, [0, 2, 1]]
    fixed = orient_outward(Mesh(s.verts, broken))
    np.testing.assert_array_equal(fixed.faces, s.faces)
    inverted = orient_outward(Mesh(s.verts, s.faces[:, [0, 2, 1]]))
    np.testing.assert_array_equal(inverted.faces, s.faces)


def test_bundled_embryo_orientation_convention(embryo):
    # most faces follow "normal from l1 into l2": volumes are positive even before repair
    raw = cell_volumes(embryo)
    assert all(v > 0 for v in raw.values())
    fixed = orient_outward(embryo)
    fixed_vol = cell_volumes(fixed)
    changed = np.any(fixed.faces != embryo.faces, axis=1) | np.any(fixed.labels != embryo.labels, axis=1)
    assert 0 < changed.mean() < 0.1  # the data has a few wrongly wound faces; repair touches only those
    # independent check: voxel counting (orientation-free ray parity) agrees with the repaired volumes
    lab = label_image(embryo, (220, 260, 160), 1.0)
    for cell, vol in fixed_vol.items():
        assert np.count_nonzero(lab == cell) == pytest.approx(vol, rel=0.01)
        assert abs(np.count_nonzero(lab == cell) - raw[cell]) > abs(np.count_nonzero(lab == cell) - vol)


def test_merge_meshes_numbers_cells_and_orients_like_rec():
    a = icosphere((0, 0, 0), 1.0, 2)
    b = icosphere((5, 0, 0), 2.0, 2)
    merged = merge_meshes([a, b])
    assert merged.cell_ids.tolist() == [1, 2]
    vols = cell_volumes(merged)
    assert vols[1] == pytest.approx(signed_volume(a.verts, a.faces), rel=1e-12)
    assert vols[2] == pytest.approx(signed_volume(b.verts, b.faces), rel=1e-12)
    assert np.all(merged.labels[:, 0] == 0)  # (0, cell): normals point into the cell
    assert signed_volume(merged.verts, merged.faces) < 0
    again = merge_meshes([merged, a])
    assert again.cell_ids.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="reuses cell ids"):
        merge_meshes([merged, merged], relabel=False)
    with pytest.raises(TypeError, match=r"meshes\[1\]"):
        merge_meshes([a, "b"])


def test_icosphere_properties():
    s = icosphere((1, 2, 3), 4.0, 3)
    assert s.faces.shape == (20 * 4**3, 3) and s.labels is None
    np.testing.assert_allclose(np.linalg.norm(s.verts - [1, 2, 3], axis=1), 4.0, rtol=1e-14)
    assert signed_volume(s.verts, s.faces) > 0
    with pytest.raises(ValueError, match="radius_um"):
        icosphere((0, 0, 0), -1.0)


def test_seed_spheres_labels_orientation_and_centroids():
    centres = np.array([[10.0, 10.0, 10.0], [10.0, 10.0, 25.0], [20.0, 12.0, 14.0]])
    radii = np.array([4.0, 3.0, 2.5])
    seeds = seed_spheres(centres, radii, subdivisions=3)
    assert seeds.cell_ids.tolist() == [1, 2, 3]
    assert np.all(seeds.labels[:, 0] == 0)
    table = measure(seeds)
    np.testing.assert_array_equal(table["cell"], [1, 2, 3])
    np.testing.assert_allclose(table["centroid"], centres, atol=1e-10)
    np.testing.assert_allclose(table["volume_um3"], 4 / 3 * np.pi * radii**3, rtol=0.01)
    for c in (1, 2, 3):  # .rec convention: faces labelled (0, c) have normals into c
        f = seeds.faces[seeds.labels[:, 1] == c]
        assert signed_volume(seeds.verts, f) < 0
    assert len(contacts(seeds)["area_um2"]) == 0


def test_seed_spheres_edge_length_and_errors():
    seeds = seed_spheres([[0, 0, 0], [0, 0, 30]], 6.0, edge_um=1.5)
    q = triangle_quality(seeds)
    assert q["mean_edge_um"] == pytest.approx(1.5, rel=0.2)
    assert q["min_angle_deg"] > 20
    for c in (1, 2):
        assert len(_boundary_edges(cell_faces(seeds, c))) == 0  # closed
    with pytest.raises(ValueError, match="centers_um"):
        seed_spheres(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="radii_um"):
        seed_spheres(np.zeros((2, 3)), [1.0, -1.0])
    with pytest.raises(ValueError, match="radii_um"):
        seed_spheres(np.zeros((2, 3)), [1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------
# label image <-> meshes
# ------------------------------------------------------------------------------------------


def test_label_image_sphere_volume_within_discretisation():
    R = 9.0
    sphere = icosphere((20.3, 19.7, 21.1), R, 5)
    lab = label_image(sphere, (42, 40, 44), 1.0)
    n = np.count_nonzero(lab == 1)
    poly = signed_volume(sphere.verts, sphere.faces)
    # voxel counting error is a surface effect: much less than area * voxel / 2
    assert abs(n - poly) < 0.05 * 4 * np.pi * R**2 * 0.5
    assert n == pytest.approx(poly, rel=0.01)
    assert set(np.unique(lab)) == {0, 1}


def test_label_image_box_is_exact_with_spacing_and_origin():
    spacing = np.array([0.5, 0.25, 0.2])
    origin = np.array([10.0, -3.0, 1.0])
    # faces half-way between voxel centres: voxels [2, 6) x [3, 11) x [4, 9) inside
    lo = origin + (np.array([2, 3, 4]) - 0.5) * spacing
    hi = origin + (np.array([6, 11, 9]) - 0.5) * spacing
    lab = label_image(box_mesh(lo, hi), (8, 14, 12), spacing, origin)
    expected = np.zeros((8, 14, 12), np.int32)
    expected[2:6, 3:11, 4:9] = 1
    np.testing.assert_array_equal(lab, expected)


def test_label_image_overlap_partial_outside_and_errors():
    a = icosphere((5, 5, 5), 3.0, 3)
    b = icosphere((5, 5, 8), 3.0, 3)
    lab = label_image(merge_meshes([a, b]), (11, 11, 11), 1.0)
    only_a = label_image(a, (11, 11, 11), 1.0) == 1
    assert np.all(lab[only_a] == 1)  # overlap goes to the smaller id
    assert np.any(lab == 2)
    # a cell sticking out of the grid: the part inside is what a larger grid would give
    ball = icosphere((0.3, 0.2, 0.1), 4.0, 3)
    part = label_image(ball, (6, 6, 6), 1.0)
    full = label_image(ball, (13, 13, 13), 1.0, origin_um=(-6, -6, -6))
    np.testing.assert_array_equal(part, full[6:12, 6:12, 6:12])
    assert part[0, 0, 0] == 1 and part[5, 5, 5] == 0
    with pytest.raises(ValueError, match="shape"):
        label_image(a, (10, 10), 1.0)
    with pytest.raises(ValueError, match="spacing_um"):
        label_image(a, (10, 10, 10), 0.0)


def _two_blobs(shape=(40, 44, 48)):
    z, y, x = np.indices(shape)
    lab = np.zeros(shape, np.int32)
    lab[((z - 18) / 9.0) ** 2 + ((y - 20) / 11.0) ** 2 + ((x - 16) / 10.0) ** 2 <= 1] = 3
    lab[((z - 20) ** 2 + (y - 24) ** 2 + (x - 34) ** 2) <= 8.0**2] = 7
    return lab


def test_meshes_from_labels_volumes_ids_and_frame():
    lab = _two_blobs()
    spacing = (0.8, 0.4, 0.4)
    mesh = meshes_from_labels(lab, spacing, edge_um=0.8)
    assert mesh.cell_ids.tolist() == [3, 7]
    table = measure(mesh)
    vox = np.prod(spacing)
    for cell, vol, centroid in zip(table["cell"], table["volume_um3"], table["centroid"]):
        mask = lab == cell
        assert vol == pytest.approx(mask.sum() * vox, rel=0.03)
        # image frame: voxel (i, j, k) centre at (i sz, j sy, k sx)
        np.testing.assert_allclose(centroid, np.argwhere(mask).mean(axis=0) * spacing, atol=0.1)
    for c in (3, 7):
        assert len(_boundary_edges(cell_faces(mesh, c))) == 0
    assert triangle_quality(mesh)["mean_edge_um"] == pytest.approx(0.8, rel=0.25)
    with pytest.raises(ValueError, match="no labels"):
        meshes_from_labels(np.zeros((5, 5, 5), int), 1.0)
    with pytest.raises(ValueError, match="3D"):
        meshes_from_labels(np.zeros((5, 5), int), 1.0)


def test_label_image_round_trip_iou():
    lab = _two_blobs()
    spacing = (0.8, 0.4, 0.4)
    mesh = meshes_from_labels(lab, spacing, edge_um=0.8)
    back = label_image(mesh, lab.shape, spacing)
    for c in (3, 7):
        a, b = lab == c, back == c
        iou = np.count_nonzero(a & b) / np.count_nonzero(a | b)
        assert iou >= 0.95, (c, iou)


# ------------------------------------------------------------------------------------------
# remeshing
# ------------------------------------------------------------------------------------------


def test_remesh_improves_bad_triangles_and_keeps_shape():
    import trimesh

    uv = trimesh.creation.uv_sphere(radius=5.0, count=[96, 12])  # slivers near the poles
    mesh = orient_outward(Mesh(uv.vertices, uv.faces))
    before = triangle_quality(mesh)
    out = remesh(mesh, 0.8)
    after = triangle_quality(out)
    print(
        f"uv sphere min angle {before['min_angle_deg']:.1f} -> {after['min_angle_deg']:.1f} deg, "
        f"mean smallest angle {before['mean_min_angle_deg']:.1f} -> {after['mean_min_angle_deg']:.1f}"
    )
    assert before["min_angle_deg"] < 10 and after["min_angle_deg"] > 25
    assert after["mean_min_angle_deg"] > 45
    assert after["mean_edge_um"] == pytest.approx(0.8, rel=0.2)
    assert out.labels is None
    assert signed_volume(out.verts, out.faces) == pytest.approx(signed_volume(mesh.verts, mesh.faces), rel=0.01)
    assert len(_boundary_edges(out.faces)) == 0


def _fold_length(mesh) -> float:
    """Total length of the edges used by more than two faces of one interface patch (folds;
    0 for a clean mesh, the bundled embryo has one)."""
    from deltamic_core.geometry.ops import edge_counts

    pairs = np.sort(mesh.labels, axis=1)
    total = 0.0
    for pair in np.unique(pairs, axis=0):
        e, counts = edge_counts(mesh.faces[(pairs == pair).all(axis=1)])
        e = e[counts > 2]
        total += float(np.linalg.norm(mesh.verts[e[:, 0]] - mesh.verts[e[:, 1]], axis=1).sum())
    return total


def test_remesh_multicell_embryo_keeps_shared_membranes(embryo):
    from deltamic_core.geometry._junctions import _junction_edges

    h = 3.5
    before_q = triangle_quality(embryo)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every patch must be remeshed
        out = remesh(embryo, h)
    after_q = triangle_quality(out)
    print(
        f"embryo: {before_q['n_faces']} -> {after_q['n_faces']} faces, mean smallest angle "
        f"{before_q['mean_min_angle_deg']:.1f} -> {after_q['mean_min_angle_deg']:.1f} deg, "
        f"1st percentile {before_q['p01_min_angle_deg']:.1f} -> {after_q['p01_min_angle_deg']:.1f}"
    )
    assert after_q["mean_min_angle_deg"] > before_q["mean_min_angle_deg"]
    assert after_q["mean_edge_um"] == pytest.approx(h, rel=0.2)
    assert out.cell_ids.tolist() == [1, 2, 3]
    for c in (1, 2, 3):
        assert len(_boundary_edges(cell_faces(out, c))) == 0  # each cell still closed
    assert _fold_length(out) <= _fold_length(embryo) + 1e-9  # no new folds (the old one may be split)
    # junction lines (where three regions meet) were resampled towards the target too
    lab = out.labels.astype(np.int64)
    junction = _junction_edges(out.faces, lab[:, 0] * 10 + lab[:, 1])
    lengths = np.linalg.norm(out.verts[junction[:, 0]] - out.verts[junction[:, 1]], axis=1)
    assert 0.7 * h < lengths.mean() < 1.3 * h and lengths.max() <= 4 / 3 * h + 1e-9
    m0, m1 = measure(embryo), measure(out)
    np.testing.assert_allclose(m1["volume_um3"], m0["volume_um3"], rtol=1e-4)  # volumes preserved
    c0, c1 = contacts(embryo), contacts(out)
    np.testing.assert_array_equal(c1["cell_a"], c0["cell_a"])
    np.testing.assert_allclose(c1["area_um2"], c0["area_um2"], rtol=0.03)


def test_remesh_separate_cells_keeps_labels_and_orientation():
    seeds = seed_spheres([[0, 0, 0], [0, 0, 20]], [5.0, 4.0], subdivisions=4)
    out = remesh(seeds, 1.0)
    assert out.cell_ids.tolist() == [1, 2]
    assert np.all(out.labels[:, 0] == 0)
    for c in (1, 2):
        assert signed_volume(out.verts, out.faces[out.labels[:, 1] == c]) < 0
    np.testing.assert_allclose(measure(out)["volume_um3"], measure(seeds)["volume_um3"], rtol=1e-3)
    # without the volume correction the new vertices sit on the old facets: the cells shrink
    shrunk = measure(remesh(seeds, 1.0, preserve_volume=False))["volume_um3"]
    assert np.all(shrunk < measure(seeds)["volume_um3"] * 0.995)
    with pytest.raises(ValueError, match="edge_um"):
        remesh(seeds, -1.0)


# ------------------------------------------------------------------------------------------
# measurements on the bundled embryo
# ------------------------------------------------------------------------------------------


def test_embryo_measurements_and_contacts(embryo):
    table = measure(embryo)
    assert table["cell"].tolist() == [1, 2, 3]
    assert np.all(table["volume_um3"] > 0)
    assert np.all((table["sphericity"] > 0.5) & (table["sphericity"] < 1))
    c = contacts(embryo)
    assert list(zip(c["cell_a"].tolist(), c["cell_b"].tolist())) == [(1, 2), (1, 3), (2, 3)]
    m = contact_matrix(embryo)
    np.testing.assert_allclose(m, m.T)
    for a, b, area in zip(c["cell_a"], c["cell_b"], c["area_um2"]):
        assert m[a, b] == pytest.approx(area)
        # independent: the faces with exactly this label pair, in either order
        sel = ((embryo.labels[:, 0] == a) & (embryo.labels[:, 1] == b)) | (
            (embryo.labels[:, 0] == b) & (embryo.labels[:, 1] == a)
        )
        assert area == pytest.approx(face_areas(embryo.verts, embryo.faces[sel]).sum())
    # each cell's area = its free surface + its contacts
    for i, cell in enumerate(table["cell"]):
        assert table["area_um2"][i] == pytest.approx(m[cell].sum(), rel=1e-12)
    assert table.contacts["area_um2"].tolist() == c["area_um2"].tolist()
    rows = table.rows()
    assert rows[0]["cell"] == 1 and isinstance(rows[0]["volume_um3"], float)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(table)
    assert frame.shape == (3, 8) and frame["volume_um3"].tolist() == table["volume_um3"].tolist()


def _split_ellipsoid(shape=(40, 44, 48)):
    """Three cells from one ellipsoid cut by the planes x = 24 and z = 22 (ids 1, 2, 5)."""
    z, y, x = np.indices(shape)
    lab = np.zeros(shape, np.int32)
    lab[((z - 20) / 12.0) ** 2 + ((y - 22) / 14.0) ** 2 + ((x - 24) / 18.0) ** 2 <= 1] = 1
    lab[(lab == 1) & (x >= 24)] = 2
    lab[(lab == 1) & (z >= 22)] = 5
    return lab


def _voxel_face_area(lab, a, b, spacing):
    sz, sy, sx = spacing
    area = 0.0
    for d, face in enumerate((sy * sx, sz * sx, sz * sy)):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d], hi[d] = slice(0, -1), slice(1, None)
        A, B = lab[tuple(lo)], lab[tuple(hi)]
        area += np.count_nonzero(((A == a) & (B == b)) | ((A == b) & (B == a))) * face
    return area


def test_meshes_from_labels_shared_membranes():
    lab = _split_ellipsoid()
    spacing = (0.8, 0.4, 0.4)
    mesh = meshes_from_labels(lab, spacing, edge_um=0.8, shared=True)
    assert mesh.cell_ids.tolist() == [1, 2, 5]
    for c in (1, 2, 5):
        assert len(_boundary_edges(cell_faces(mesh, c))) == 0  # every cell closed
    # the membrane between 1 and 2 is one sheet used by both cells, not two copies
    between = ((mesh.labels == [1, 2]) | (mesh.labels == [2, 1])).all(axis=1)
    assert between.sum() > 0
    faces_1 = set(map(tuple, np.sort(cell_faces(mesh, 1), axis=1).tolist()))
    faces_2 = set(map(tuple, np.sort(cell_faces(mesh, 2), axis=1).tolist()))
    assert faces_1 & faces_2 == set(map(tuple, np.sort(mesh.faces[between], axis=1).tolist()))
    table = measure(mesh)
    for cell, vol in zip(table["cell"], table["volume_um3"]):
        assert vol == pytest.approx(np.count_nonzero(lab == cell) * np.prod(spacing), rel=0.02)
    # flat interfaces: their area is the voxel-face area (up to the rounded rim at the junction)
    c = contacts(mesh)
    for a, b, area in zip(c["cell_a"], c["cell_b"], c["area_um2"]):
        assert area == pytest.approx(_voxel_face_area(lab, a, b, spacing), rel=0.06)
    back = label_image(mesh, lab.shape, spacing)
    for cell in (1, 2, 5):
        iou = np.count_nonzero((lab == cell) & (back == cell)) / np.count_nonzero((lab == cell) | (back == cell))
        assert iou >= 0.95, (cell, iou)


def test_snap_to_cells_puts_a_rebuilt_mesh_back_on_the_reference_surfaces():
    from deltamic_core.geometry import snap_to_cells

    # reference: two separate spheres of radius 3 (0.2 um apart); the rebuild: their labels
    # grown by 0.3 um until they touch, as one shared-membrane mesh (voxel-accurate, too big)
    r, spacing = 3.0, (0.25, 0.25, 0.25)
    c1, c2 = np.array([4.0, 4.0, 4.0 - 3.1]) + [0, 0, 4.0], np.array([4.0, 4.0, 4.0 + 3.1]) + [0, 0, 4.0]
    reference = merge_meshes([icosphere(c1, r, 5), icosphere(c2, r, 5)])
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip((33, 33, 65), spacing)], indexing="ij")
    p = np.stack([z, y, x], axis=-1)
    d1, d2 = np.linalg.norm(p - c1, axis=-1), np.linalg.norm(p - c2, axis=-1)
    lab = np.where((d1 < r + 0.3) & (d1 <= d2), 1, np.where(d2 < r + 0.3, 2, 0)).astype(np.int32)
    rebuilt = meshes_from_labels(lab, spacing, 0.5, shared=True)
    shared = (rebuilt.labels > 0).all(axis=1)
    assert shared.any()
    free1 = np.unique(rebuilt.faces[(rebuilt.labels == 0).any(axis=1) & (rebuilt.labels == 1).any(axis=1)])
    free1 = np.setdiff1d(free1, np.unique(rebuilt.faces[shared]))  # not on the junction
    before = np.abs(np.linalg.norm(rebuilt.verts[free1] - c1, axis=1) - r)
    assert before.mean() > 0.15  # the rebuild really is off
    out = snap_to_cells(rebuilt, reference, max_um=1.0)
    np.testing.assert_array_equal(out.faces, rebuilt.faces)
    np.testing.assert_array_equal(out.labels, rebuilt.labels)
    after = np.abs(np.linalg.norm(out.verts[free1] - c1, axis=1) - r)
    assert after.max() < 0.01  # on the sphere (up to the icosphere's chords)
    # a shared vertex goes half way between the two cells' surfaces: on the mid plane
    mid = np.unique(rebuilt.faces[shared])
    assert np.abs(out.verts[mid, 2] - 0.5 * (c1[2] + c2[2])).max() < 0.02
    # moves longer than max_um are not made
    np.testing.assert_array_equal(snap_to_cells(rebuilt, reference, max_um=0.1).verts[free1], rebuilt.verts[free1])


class _NumpyCollapser:
    """Reference for ``_junctions._Collapser``: the same collapse rules written with numpy
    arrays (the implementation before the plain-Python rewrite)."""

    def __init__(self, verts, faces):
        import scipy.sparse as sps

        self.verts, self.faces = verts.copy(), faces.copy()
        self.alive = np.ones(len(faces), dtype=bool)
        inc = sps.csr_matrix(
            (np.ones(faces.size, dtype=np.int8), (faces.reshape(-1), np.repeat(np.arange(len(faces)), 3))),
            shape=(len(verts), len(faces)),
        )
        self._inc = inc
        self._vf, self.touched = {}, set()

    def point(self, v):
        return self.verts[v]

    def faces_of(self, v):
        if v not in self._vf:
            rows = self._inc.indices[self._inc.indptr[v] : self._inc.indptr[v + 1]]
            self._vf[v] = {int(fi) for fi in rows if self.alive[fi]}
        return self._vf[v]

    def collapse(self, u, v, target, h_max):
        faces, verts = self.faces, self.verts
        target = np.asarray(target, dtype=np.float64)
        fu, fv = self.faces_of(u), self.faces_of(v)
        shared = fu & fv
        if not shared:
            return False
        opposite = {x for fi in shared for x in faces[fi].tolist() if x not in (u, v)}
        nbr_u = {x for fi in fu for x in faces[fi].tolist()} - {u, v}
        nbr_v = {x for fi in fv for x in faces[fi].tolist()} - {u, v}
        if nbr_u & nbr_v != opposite:
            return False
        if np.any(np.linalg.norm(verts[list(nbr_u | nbr_v)] - target, axis=1) > h_max):
            return False
        changed = []
        for fi in (fu | fv) - shared:
            old = faces[fi]
            p0, p1, p2 = (target if x in (u, v) else verts[x] for x in old.tolist())
            before = np.cross(verts[old[1]] - verts[old[0]], verts[old[2]] - verts[old[0]])
            after = np.cross(p1 - p0, p2 - p0)
            if np.dot(before, after) <= 0 or np.linalg.norm(after) < 1e-3 * np.linalg.norm(before):
                return False
            changed.append((fi, np.where(old == u, v, old)))
        verts[v] = target
        for fi, new in changed:
            faces[fi] = new
        for fi in shared:
            self.alive[fi] = False
            for x in faces[fi].tolist():
                if x in self._vf:
                    self._vf[x].discard(fi)
        self._vf[v] = (fu | fv) - shared
        self._vf[u] = set()
        self.touched.update((u, v))
        return True


@pytest.mark.parametrize("edge", [0.6, 1.0])
def test_junction_collapses_match_numpy_reference(monkeypatch, edge):
    """The plain-Python collapser takes exactly the decisions of the numpy formulation (same
    vertices, faces and labels, bit for bit) on a voxel mesh of 4 cells with many short
    junction edges."""
    from deltamic_core.geometry import _junctions, orient_outward
    from deltamic_core.geometry.surface_nets import surface_nets

    z, y, x = np.mgrid[:24, :40, :40]
    lab = np.zeros((24, 40, 40), dtype=np.int32)
    ball = (z - 12) ** 2 * 4 + (y - 20) ** 2 + (x - 20) ** 2 < 16**2
    lab[ball] = 1 + (y[ball] > 20 + 0.3 * (x[ball] - 20)) + 2 * (x[ball] > 19 + 0.2 * (z[ball] - 12))
    nets = orient_outward(surface_nets(lab, (0.5, 0.25, 0.25)))
    new = _junctions.resample_junctions(nets.verts, nets.faces, nets.labels, edge)
    monkeypatch.setattr(_junctions, "_Collapser", _NumpyCollapser)
    ref = _junctions.resample_junctions(nets.verts, nets.faces, nets.labels, edge)
    assert len(ref[1]) < len(nets.faces)  # collapses did happen
    for a, b in zip(new, ref):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_remesh_patch_keeps_pillow_faces_instead_of_crashing(tmp_path):
    """A real shared-membrane patch (from a fit of the agg8-fine benchmark image) with two faces
    on the same three vertices: gpytoolbox's remesh_botsch killed the process on it (SIGSEGV).
    The patch is remeshed in a child process, which must finish, with those two faces kept."""
    import subprocess
    import sys
    from pathlib import Path

    data = Path(__file__).parent / "data" / "remesh_pillow_patch.npz"
    code = (
        "import sys, numpy as np\n"
        "from deltamic_core.geometry.remesh import _remesh_patch\n"
        "d = np.load(sys.argv[1])\n"
        "f = d['faces'].astype(np.int64)\n"
        "out = _remesh_patch(d['verts'], f, float(d['edge_um']), int(d['iterations']), True)\n"
        "assert out is not None\n"
        "key = np.sort(f, axis=1)\n"
        "_, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)\n"
        "pillow = np.sort(f[cnt[inv.reshape(-1)] > 1], axis=1)\n"
        "kept = np.sort(np.asarray(out[3]), axis=1)\n"
        "assert len(pillow) == 2 and all((kept == p).all(1).any() for p in pillow), (pillow, kept)\n"
        "assert len(out[2]) > 100\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-1500:])
    assert proc.stdout.strip() == "ok"


def test_remesh_botsch_direct_call_equals_gpytoolbox_wrapper():
    """The patch remesher calls gpytoolbox's binding directly (its wrapper repeats our
    manifold/boundary checks): on an open patch with fixed boundary vertices, and on a closed
    one, the result must be gpytoolbox.remesh_botsch's, bit for bit."""
    import gpytoolbox as gp

    from deltamic_core.geometry.remesh import _remesh_botsch

    sphere = icosphere((0.0, 0.0, 0.0), 5.0, subdivisions=4)
    v, f = sphere.verts, sphere.faces
    cap = f[(v[f].mean(axis=1)[:, 0] > -1.5)]  # an open cap: its rim is the fixed boundary
    used = np.unique(cap)
    local = np.full(len(v), -1)
    local[used] = np.arange(len(used))
    pv, pf = np.ascontiguousarray(v[used]), local[cap]
    fixed = np.unique(_boundary_edges(pf))
    assert 0 < len(fixed) < len(pv)
    for verts, faces, keep in ((pv, pf, fixed), (v, f, np.zeros(0, dtype=np.int64))):
        ref = gp.remesh_botsch(verts, faces.astype(np.int32), 5, 0.6, True, feature=keep.astype(np.int32))
        got = _remesh_botsch(verts, faces, 5, 0.6, True, keep)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert len(got[1]) != len(faces)  # it did remesh
