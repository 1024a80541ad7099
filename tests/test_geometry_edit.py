"""Cell edits on multi-material meshes (geometry.edit), checked against independent truth:
volumes and areas from trimesh (its own mass properties), convex pieces' volumes from qhull,
a sphere's cap from the analytic formula, closedness from trimesh's watertight and winding
checks on every cell's surface."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial import ConvexHull

from deltamic_core.geometry import cell_surface, icosphere, meshes_from_labels
from deltamic_core.geometry.edit import delete_cell, merge_cells, split_cell
from deltamic_core.mesh import Mesh


def _tri(mesh: Mesh, cell: int) -> trimesh.Trimesh:
    s = cell_surface(mesh, cell)
    return trimesh.Trimesh(s.verts, s.faces, process=False)


def _cells(mesh: Mesh) -> list[int]:
    return [int(c) for c in np.unique(mesh.labels) if c > 0]


def _assert_closed(mesh: Mesh) -> None:
    for c in _cells(mesh):
        t = _tri(mesh, c)
        assert t.is_watertight, f"cell {c} is not closed"
        assert t.is_winding_consistent, f"cell {c} is not consistently wound"
        assert t.volume > 0, f"cell {c} has its normals inwards"


@pytest.fixture(scope="module")
def tissue() -> Mesh:
    """Three glued cells (one shared-membrane mesh): 1 | 2 | 3 along x, 3 made of two blocks."""
    lab = np.zeros((14, 16, 26), np.int32)
    lab[3:11, 3:13, 3:9] = 1
    lab[3:11, 3:13, 9:16] = 2
    lab[3:11, 3:13, 16:23] = 3
    lab[6:9, 6:10, 16:19] = 0  # a dent: cell 3 is not convex
    mesh = meshes_from_labels(lab, (0.5, 0.4, 0.4), 0.5, shared=True)
    assert _cells(mesh) == [1, 2, 3]
    assert ((mesh.labels > 0).all(axis=1)).any()  # shared membranes
    _assert_closed(mesh)
    return mesh


def test_delete_cell_leaves_the_neighbours_as_they_were(tissue):
    before = {c: _tri(tissue, c) for c in _cells(tissue)}
    out = delete_cell(tissue, 2)
    assert _cells(out) == [1, 2]  # renumbered: old 3 is now 2
    _assert_closed(out)
    for old, new in ((1, 1), (3, 2)):
        t = _tri(out, new)
        assert t.volume == pytest.approx(before[old].volume, rel=1e-12)
        assert t.area == pytest.approx(before[old].area, rel=1e-12)
        # the same surface: the same vertex positions
        np.testing.assert_array_equal(np.unique(t.vertices, axis=0), np.unique(before[old].vertices, axis=0))
    assert not ((out.labels > 0).all(axis=1)).any()  # 1 and 3 never touched: no shared face left
    with pytest.raises(ValueError, match="not a cell"):
        delete_cell(tissue, 7)
    with pytest.raises(ValueError, match="only cell"):
        delete_cell(icosphere((0, 0, 0), 1.0, 1), 1)


def test_merge_cells_removes_the_shared_membrane(tissue):
    t1, t2, t3 = (_tri(tissue, c) for c in (1, 2, 3))
    shared = np.sort(tissue.labels, axis=1)
    wall = tissue.faces[(shared[:, 0] == 1) & (shared[:, 1] == 2)]
    wall_area = trimesh.Trimesh(tissue.verts, wall, process=False).area
    assert wall_area > 1.0
    out = merge_cells(tissue, 2, 1)
    assert _cells(out) == [1, 2]
    _assert_closed(out)
    merged = _tri(out, 1)
    assert merged.volume == pytest.approx(t1.volume + t2.volume, rel=1e-10)
    assert merged.area == pytest.approx(t1.area + t2.area - 2 * wall_area, rel=1e-10)
    assert _tri(out, 2).volume == pytest.approx(t3.volume, rel=1e-12)
    with pytest.raises(ValueError, match="itself"):
        merge_cells(tissue, 2, 2)


def test_split_a_sphere_gives_the_analytic_cap_fraction():
    r = 2.0
    sphere = icosphere((1.0, -2.0, 3.0), r, 4)
    whole = trimesh.Trimesh(sphere.verts, sphere.faces, process=False).volume
    a, b = np.array([1.0, -2.0, 3.0 - 1.0]), np.array([1.0, -2.0, 3.0 + 1.6])  # plane at x = 3.3
    out = split_cell(sphere, 1, a, b)
    assert _cells(out) == [1, 2]
    _assert_closed(out)
    v1, v2 = _tri(out, 1).volume, _tri(out, 2).volume
    assert v1 + v2 == pytest.approx(whole, rel=1e-10)
    h = r - 0.3  # the cap on b's side
    cap = np.pi * h * h * (3 * r - h) / 3
    assert v2 / whole == pytest.approx(cap / (4 / 3 * np.pi * r**3), abs=2e-3)
    # the wall is the section's disc (area of the inscribed polygon, within the chord error)
    wall = out.faces[(out.labels == [1, 2]).all(axis=1)]
    assert trimesh.Trimesh(out.verts, wall, process=False).area == pytest.approx(np.pi * (r * r - 0.09), rel=5e-3)


def test_split_an_oblique_box_matches_qhull():
    box = trimesh.creation.box(extents=(2.0, 3.0, 4.0))
    mesh = Mesh(np.asarray(box.vertices), np.asarray(box.faces))
    a, b = np.array([-0.3, -0.2, -0.5]), np.array([0.5, 0.4, 0.6])
    out = split_cell(mesh, 1, a, b, edge_um=0.5)
    _assert_closed(out)
    # truth: the convex hull of the box corners on each side and the box edges' crossings
    centre, normal = (a + b) / 2, (b - a) / np.linalg.norm(b - a)
    corners = np.array(np.meshgrid([-1, 1], [-1.5, 1.5], [-2, 2], indexing="ij")).reshape(3, -1).T
    d = (corners - centre) @ normal
    crossings = []
    for i in range(8):
        for j in range(i + 1, 8):
            if np.count_nonzero(corners[i] != corners[j]) == 1 and d[i] * d[j] < 0:
                t = d[i] / (d[i] - d[j])
                crossings.append(corners[i] + t * (corners[j] - corners[i]))
    for cell, mask in ((1, d < 0), (2, d > 0)):
        hull = ConvexHull(np.concatenate([corners[mask], crossings]))
        assert _tri(out, cell).volume == pytest.approx(hull.volume, rel=1e-9)


def test_split_a_glued_cell_keeps_its_neighbours(tissue):
    before = {c: _tri(tissue, c) for c in _cells(tissue)}
    centre = cell_surface(tissue, 2).verts.mean(axis=0)
    out = split_cell(tissue, 2, centre - (0.2, 1.0, 0.3), centre + (0.2, 1.0, 0.3))
    assert _cells(out) == [1, 2, 3, 4]
    _assert_closed(out)
    assert _tri(out, 2).volume + _tri(out, 4).volume == pytest.approx(before[2].volume, rel=1e-10)
    assert min(_tri(out, 2).volume, _tri(out, 4).volume) > 0.3 * before[2].volume
    for c in (1, 3):  # their faces along the cut are cut too, their shapes are the same
        assert _tri(out, c).volume == pytest.approx(before[c].volume, rel=1e-10)
        assert _tri(out, c).area == pytest.approx(before[c].area, rel=1e-10)
    # the new cell touches both old neighbours through shared faces (the membranes were cut)
    pairs = {tuple(sorted(p)) for p in out.labels.tolist() if min(p) > 0}
    assert {(2, 4), (1, 2), (3, 4)} <= pairs or {(2, 4), (1, 4), (2, 3)} <= pairs
    with pytest.raises(ValueError, match="does not cut cell 2"):
        split_cell(tissue, 2, centre + (0, 0, 40.0), centre + (0, 0, 41.0))
    with pytest.raises(ValueError, match="same point"):
        split_cell(tissue, 2, centre, centre)
