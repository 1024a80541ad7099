"""geometry.subdivide (every triangle split in four at its edge midpoints) and the fit's
FitConfig.subdivide_final_at, checked against analytic areas, volumes and counts."""

import numpy as np
import pytest

from deltamic_core.fit import FitConfig, Fitter
from deltamic_core.geometry import (
    cell_volumes,
    contacts,
    edge_lengths,
    face_areas,
    icosphere,
    meshes_from_labels,
    subdivide,
)
from deltamic_core.geometry.ops import edge_counts
from deltamic_core.mesh import Mesh
from deltamic_core.psf import GaussianPSF


def _tetrahedron():
    v = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return Mesh(v, f)


def test_a_tetrahedron_splits_into_sixteen_faces_of_a_quarter_area():
    t = _tetrahedron()
    s = subdivide(t)
    # 4 corners + 6 edge midpoints; every face a quarter of its parent, same total area and volume
    assert (len(s.verts), len(s.faces)) == (10, 16)
    parent_area = face_areas(t.verts, t.faces)
    np.testing.assert_allclose(face_areas(s.verts, s.faces), np.tile(parent_area, 4) / 4.0)
    assert cell_volumes(s)[1] == pytest.approx(1.0 / 6.0, rel=1e-12)  # the unit tetrahedron
    # closed and consistently wound: every edge used by exactly two faces, in opposite directions
    _, counts = edge_counts(s.faces)
    assert set(counts.tolist()) == {2}
    directed = np.concatenate([s.faces[:, [0, 1]], s.faces[:, [1, 2]], s.faces[:, [2, 0]]])
    assert len({tuple(e) for e in directed.tolist()}) == len(directed)


def test_shared_membranes_stay_stitched_with_their_labels():
    # two touching boxes of voxels: one shared sheet (1, 2), junction edges used by three faces
    lab = np.zeros((8, 8, 12), np.int32)
    lab[2:6, 2:6, 2:6] = 1
    lab[2:6, 2:6, 6:10] = 2
    m = meshes_from_labels(lab, (0.5, 0.5, 0.5), 0.5, shared=True)
    s = subdivide(m)
    assert len(s.faces) == 4 * len(m.faces)
    np.testing.assert_array_equal(s.labels, np.tile(m.labels, (4, 1)))
    for c, v in cell_volumes(m).items():
        assert cell_volumes(s)[c] == pytest.approx(v, rel=1e-12)
    assert float(contacts(s)["area_um2"].sum()) == pytest.approx(float(contacts(m)["area_um2"].sum()), rel=1e-12)
    # no edge lost its neighbours: the edge-use counts are those of the parent, each edge twice over
    _, cm = edge_counts(m.faces)
    _, cs = edge_counts(s.faces)
    assert sorted(set(cs.tolist())) == sorted(set(cm.tolist()))
    assert edge_lengths(s.verts, s.faces).mean() < 0.6 * edge_lengths(m.verts, m.faces).mean()


def test_the_fit_subdivides_once_at_its_fraction_of_the_last_level():
    img = np.random.default_rng(0).random((20, 40, 40))
    sphere = icosphere((5.0, 5.0, 5.0), 3.0, 2)
    config = FitConfig(levels=(1,), iterations=4, lr=1e-4, subdivide_final_at=0.5, subdivide_lambda_factor=4.0)
    fitter = Fitter(img, (0.5, 0.25, 0.25), sphere, GaussianPSF(sigma_um=0.3), config)
    steps = [fitter.step() for _ in range(4)]
    assert [s.remeshed for s in steps] == [False, True, False, False]
    assert [len(s.faces) for s in steps] == [len(sphere.faces)] + [4 * len(sphere.faces)] * 3
    # the subdivided mesh's preconditioner: lambda x subdivide_lambda_factor
    assert fitter._precond.lambda_smooth == pytest.approx(4.0 * config.lambda_for_level(0))
    # a fit handed over after the subdivision goes on with the same preconditioner
    other = Fitter(img, (0.5, 0.25, 0.25), sphere, GaussianPSF(sigma_um=0.3), config)
    other.load_state(fitter.export_state())
    assert other._precond.lambda_smooth == pytest.approx(fitter._precond.lambda_smooth)
    assert len(other.current_mesh().faces) == 4 * len(sphere.faces)
    assert FitConfig().subdivide_final_at is None
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="subdivide_final_at"):
            FitConfig(subdivide_final_at=bad)
