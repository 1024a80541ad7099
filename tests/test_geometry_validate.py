"""deltamic_core.geometry.validate: meshes that would give silently wrong measurements are
repaired (small holes, unlabelled cells) or refused in one line; the cost is checked before
seed spheres are built.

The number in a test's name is the case of the data-safety issue (10) it guards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh


# ---------------------------------------------------------------------------------------------
# 5. silently wrong measurements
# ---------------------------------------------------------------------------------------------
def _sphere(c, r, s=3):
    m = trimesh.creation.icosphere(subdivisions=s, radius=r)
    m.vertices += np.asarray(c)
    return m


def test_case05_two_cells_without_labels_become_two_cells():
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.mesh import Mesh

    both = trimesh.util.concatenate([_sphere((0, 0, 0), 2.0), _sphere((0, 0, 10), 3.0)])
    mesh, notes = prepare_cells(Mesh(np.asarray(both.vertices), np.asarray(both.faces)))
    assert mesh.n_cells == 2 and any("2 cells" in n for n in notes)
    vols = sorted(np.asarray(measure(mesh)["volume_um3"]).tolist())
    exact = sorted([_sphere((0, 0, 0), 2.0).volume, _sphere((0, 0, 0), 3.0).volume])
    np.testing.assert_allclose(vols, exact, rtol=1e-9)


def test_case05_open_mesh_is_repaired_or_refused():
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.mesh import Mesh

    s = _sphere((0, 0, 0), 2.0)
    one_hole = np.asarray(s.faces)[1:]  # a single missing triangle: fill_holes closes it
    mesh, notes = prepare_cells(Mesh(np.asarray(s.vertices), one_hole))
    assert any("closed the holes" in n for n in notes)
    sph = float(np.asarray(measure(mesh)["sphericity"])[0])
    assert sph <= 1.0
    # a hemisphere (a big hole, no planar patch): refused, never a sphericity > 1
    v = np.asarray(s.vertices)
    f = np.asarray(s.faces)
    keep = np.all(v[f][:, :, 2] > -0.3, axis=1)
    with pytest.raises(ValueError, match="open surface|not closed"):
        prepare_cells(Mesh(v, f[keep]))


def test_case05_overlapping_shells_are_refused():
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.mesh import Mesh

    both = trimesh.util.concatenate([_sphere((0, 0, 0), 3.0), _sphere((0, 0, 2), 3.0)])
    with pytest.raises(ValueError, match="overlap"):
        prepare_cells(Mesh(np.asarray(both.vertices), np.asarray(both.faces)))
    nested = trimesh.util.concatenate([_sphere((0, 0, 0), 3.0), _sphere((0, 0, 0), 1.0)])
    with pytest.raises(ValueError, match="overlap"):
        prepare_cells(Mesh(np.asarray(nested.vertices), np.asarray(nested.faces)))


def test_case05_tiny_seed_refused_and_overlapping_seeds_shrunk():
    from deltamic_core.geometry.validate import check_seed_radii, shrink_overlapping_seeds

    with pytest.raises(ValueError, match="smaller than a voxel"):
        check_seed_radii([2.0, 0.01], (0.5, 0.25, 0.25))
    check_seed_radii([2.0, 0.3], (0.5, 0.25, 0.25))
    c = np.array([[0, 0, 0], [0, 0, 3.0], [0, 0, 20.0]])
    r, n = shrink_overlapping_seeds(c, [2.0, 2.0, 2.0])
    assert n == 2
    np.testing.assert_allclose(r, [1.5, 1.5, 2.0])
    from scipy.spatial.distance import pdist

    d = pdist(c)
    rs = np.add.outer(r, r)[np.triu_indices(3, 1)]
    assert np.all(rs <= d + 1e-12)


# ---------------------------------------------------------------------------------------------
# 6. hang: cost check up front, a Laplacian that scales
# ---------------------------------------------------------------------------------------------
def test_case06_too_many_seeds_refused_with_the_figure():
    from deltamic_core.geometry.validate import check_fit_cost

    with pytest.raises(ValueError, match=r"2\.46 voxels per cell"):
        check_fit_cost((24, 32, 32), n_seeds=10000)
    with pytest.raises(ValueError, match="per voxel"):
        check_fit_cost((24, 32, 32), n_faces=10000 * 1280)
    check_fit_cost((24, 32, 32), n_seeds=10, n_faces=10 * 320)


def test_case06_laplacian_matches_the_definition_and_scales():
    import scipy.sparse as sp

    from deltamic_core.fit.precondition import mesh_laplacian

    s = _sphere((0, 0, 0), 1.0, 2)
    v, f = np.asarray(s.vertices), np.asarray(s.faces)
    lap = mesh_laplacian(v, f).toarray()
    ref = np.zeros_like(lap)  # D - A from the edge list, written out
    for a, b in {tuple(sorted(e)) for t in f for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}:
        ref[a, b] = ref[b, a] = -1
    ref[np.diag_indices_from(ref)] = -ref.sum(1)
    np.testing.assert_array_equal(lap, ref)
    # 200 disjoint copies (the seed-sphere case): block diagonal, the same matrix per copy
    # (speed figures live in benchmarks/, not here)
    big = np.concatenate([f + i * len(v) for i in range(200)])
    L = mesh_laplacian(np.zeros((200 * len(v), 3)), big)
    assert isinstance(L, sp.csr_matrix) and L.shape[0] == 200 * len(v)
    np.testing.assert_array_equal(L[-len(v) :, -len(v) :].toarray(), ref)
    assert L.nnz == 200 * np.count_nonzero(ref)


# labelled (multi-material) meshes: small holes are filled like those of unlabelled meshes,
# big ones refused; the bundled embryo (one edge where four faces of cell 1 meet, a closed
# pinch) is accepted unchanged
def _labelled_pair():
    from deltamic_core.geometry import meshes_from_labels

    lab = np.zeros((14, 14, 22), np.int32)
    lab[3:11, 3:11, 3:11] = 1
    lab[3:11, 3:11, 11:19] = 2
    return meshes_from_labels(lab, (1.0, 1.0, 1.0), 1.5, shared=True)


def _punch(mesh, faces_to_drop):
    keep = np.ones(len(mesh.faces), bool)
    keep[list(faces_to_drop)] = False
    return mesh.copy(faces=mesh.faces[keep], labels=mesh.labels[keep])


def _closed_oriented(mesh, c):
    from deltamic_core.geometry.ops import orient_outward
    from deltamic_core.geometry.validate import _edge_balance, _outward_faces

    o = orient_outward(mesh)
    f = _outward_faces(o, c)
    _, net = _edge_balance(f, len(o.verts))
    d = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, c2 = np.unique(d, axis=0, return_counts=True)
    return not np.any(net) and not np.any(c2 % 2)


def _watertight(mesh, c):
    """trimesh's own verdict on cell c (a manifold cell): every edge in two faces, consistently wound."""
    sel = (mesh.labels[:, 0] == c) | (mesh.labels[:, 1] == c)
    t = trimesh.Trimesh(mesh.verts, mesh.faces[sel], process=False)
    t.remove_unreferenced_vertices()
    trimesh.repair.fix_winding(t)
    return bool(t.is_watertight and t.is_winding_consistent)


def _star(mesh, vertex):
    return np.flatnonzero(np.any(mesh.faces == vertex, axis=1))


@pytest.mark.parametrize("where", ["outer face", "outer star", "shared face"])
def test_case05_labelled_mesh_small_hole_repaired(where):
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells

    whole = _labelled_pair()
    assert _watertight(whole, 1) and _watertight(whole, 2)
    ref = np.asarray(measure(whole)["volume_um3"])
    lab = whole.labels
    outer = np.flatnonzero((lab.min(axis=1) == 0) & (lab.max(axis=1) == 1))
    shared = np.flatnonzero(lab.min(axis=1) == 1)
    assert len(shared) > 10
    if where == "outer face":
        drop = outer[len(outer) // 2 : len(outer) // 2 + 1]
    elif where == "outer star":
        # every face around one vertex of cell 1's outer surface only
        inner_v = set(np.unique(whole.faces[lab.max(axis=1) == 2]).tolist())
        v = next(int(x) for x in whole.faces[outer].ravel() if int(x) not in inner_v)
        drop = _star(whole, v)
        assert len(drop) >= 4
    else:
        drop = shared[len(shared) // 2 : len(shared) // 2 + 1]
    holed = _punch(whole, drop)
    assert not _watertight(holed, 1)
    fixed, notes = prepare_cells(holed, what="--init mesh 'x.ply'")
    assert len(notes) == 1 and "closed 1 small hole(s)" in notes[0] and "\n" not in notes[0]
    assert _watertight(fixed, 1) and _watertight(fixed, 2)
    vol = np.asarray(measure(fixed)["volume_um3"])
    np.testing.assert_allclose(vol, ref, rtol=2e-3)
    if where == "shared face":
        # the patch of the interface is filled once, as an interface of both cells
        assert len(fixed.faces) == len(whole.faces)
        assert np.count_nonzero(fixed.labels.min(axis=1) == 1) == len(shared)


def test_case05_labelled_mesh_big_hole_refused():
    from deltamic_core.geometry.validate import prepare_cells

    whole = _labelled_pair()
    c = whole.verts[whole.faces].mean(axis=1)
    lab = whole.labels
    cap = np.flatnonzero((lab.max(axis=1) == 1) & (lab.min(axis=1) == 0) & (c[:, 2] < 5.0))
    assert len(cap) > 20
    with pytest.raises(ValueError, match="surface of cell 1 is not closed") as err:
        prepare_cells(_punch(whole, cap), what="--init mesh 'x.ply'")
    assert "\n" not in str(err.value) and "--init mesh 'x.ply'" in str(err.value)


def test_case05_bundled_embryo_accepted_unchanged():
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.io import read_mesh

    m = read_mesh(Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec")
    out, notes = prepare_cells(m)
    assert out is m and notes == []
    for c in (1, 2, 3):
        assert _closed_oriented(m, c)
    # the divergence-theorem volumes agree with a voxelisation of each cell (independent)
    vol = np.asarray(measure(m)["volume_um3"])
    for c, v in zip((1, 2, 3), vol):
        from deltamic_core.geometry.ops import orient_outward
        from deltamic_core.geometry.validate import _outward_faces

        o = orient_outward(m)
        t = trimesh.Trimesh(o.verts, _outward_faces(o, c), process=False)
        t.remove_unreferenced_vertices()
        pts = np.random.default_rng(c).uniform(t.bounds[0], t.bounds[1], (20000, 3))
        import gpytoolbox

        inside = np.abs(gpytoolbox.winding_number(pts, t.vertices, t.faces.astype(np.int32))) > 0.5
        est = inside.mean() * np.prod(t.bounds[1] - t.bounds[0])
        assert abs(est - v) < 0.03 * v, (c, est, v)
