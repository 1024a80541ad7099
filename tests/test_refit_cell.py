"""pipeline.cells.refit_cell: one cell refitted in a crop, every other vertex frozen.

The image is made here, analytically (two spherical surfaces blurred by a Gaussian: the exact
radial profile), sharing nothing with the renderer; the truth is the spheres' radii."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from deltamic_core.fit import FitConfig, Fitter
from deltamic_core.geometry import cell_surface, icosphere, merge_meshes, meshes_from_labels
from deltamic_core.pipeline import InputError
from deltamic_core.pipeline.cells import refit_cell
from deltamic_core.psf import GaussianPSF

SPACING = (0.3, 0.3, 0.3)
SIGMA = 0.35
CENTRES = (np.array([4.5, 4.8, 4.5]), np.array([4.5, 4.8, 11.7]))
RADII = (2.0, 2.2)


def _shell_image(shape=(30, 32, 54)) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij"), axis=-1)
    img = np.full(shape, 0.1)
    for c, r0 in zip(CENTRES, RADII):
        # a uniform spherical surface blurred by a 3D Gaussian: its exact radial profile
        r = np.maximum(np.linalg.norm(grid - c, axis=-1), 1e-9)
        img += (r0 / r) * (np.exp(-0.5 * ((r - r0) / SIGMA) ** 2) - np.exp(-0.5 * ((r + r0) / SIGMA) ** 2))
    return img.astype(np.float32)


def _volume(mesh, cell) -> float:
    s = cell_surface(mesh, cell)
    return trimesh.Trimesh(s.verts, s.faces, process=False).volume


def test_refit_moves_the_cell_towards_the_truth_and_nothing_else():
    image = _shell_image()
    init = merge_meshes([icosphere(CENTRES[0], 1.5, 3), icosphere(CENTRES[1], 2.5, 3)])
    config = FitConfig(iterations=40, levels=(2, 1), target_edge_um=0.4, share_membranes=True)
    out, info = refit_cell(image, SPACING, init, 1, GaussianPSF(sigma_um=(SIGMA,) * 3), config)
    assert info["cells"] == [1, 2]  # the neighbour is in the crop (rendered), frozen
    assert info["shape"] != list(image.shape) and np.prod(info["shape"]) < np.prod(image.shape)
    np.testing.assert_array_equal(out.faces, init.faces)
    np.testing.assert_array_equal(out.labels, init.labels)
    on_2 = np.unique(cell_surface(init, 2, compact=False).faces)
    np.testing.assert_array_equal(out.verts[on_2], init.verts[on_2])  # bitwise frozen
    true_v = 4 / 3 * np.pi * RADII[0] ** 3
    before, after = _volume(init, 1), _volume(out, 1)
    assert abs(after - true_v) < 0.25 * abs(before - true_v)
    assert after == pytest.approx(true_v, rel=0.03)  # the polyhedron's chords and a short fit
    assert trimesh.Trimesh(*(lambda s: (s.verts, s.faces))(cell_surface(out, 1)), process=False).is_watertight


def test_refit_keeps_shared_membranes_and_freezes_the_rest():
    lab = np.zeros((16, 16, 24), np.int32)
    lab[4:12, 4:12, 4:11] = 1
    lab[4:12, 4:12, 11:19] = 2
    mesh = meshes_from_labels(lab, SPACING, 0.45, shared=True)
    image = np.random.default_rng(0).normal(1.0, 0.1, lab.shape).astype(np.float32)
    image[:, :, 11] += 2.0  # a bright wall a little off the shared membrane's place
    out, info = refit_cell(
        image, SPACING, mesh, 1, GaussianPSF(sigma_um=(0.3,) * 3), FitConfig(iterations=8, levels=(1,))
    )
    assert info["iterations"] == 8
    own = np.unique(cell_surface(mesh, 1, compact=False).faces)
    others = np.setdiff1d(np.arange(len(mesh.verts)), own)
    np.testing.assert_array_equal(out.verts[others], mesh.verts[others])
    assert np.abs(out.verts[own] - mesh.verts[own]).max() > 1e-3  # the cell moved
    shared = np.unique(mesh.faces[(mesh.labels > 0).all(axis=1)])
    assert np.abs(out.verts[shared] - mesh.verts[shared]).max() > 1e-3  # its membrane with 2 too
    for c in (1, 2):
        s = cell_surface(out, c)
        assert trimesh.Trimesh(s.verts, s.faces, process=False).is_watertight


def test_refit_refuses_bad_input():
    mesh = merge_meshes([icosphere(CENTRES[0], 1.5, 2), icosphere(CENTRES[1], 2.0, 2)])
    with pytest.raises(InputError, match="not a cell"):
        refit_cell(_shell_image(), SPACING, mesh, 3, GaussianPSF(sigma_um=(SIGMA,) * 3))
    with pytest.raises(ValueError, match="fixed topology"):
        Fitter(
            _shell_image(),
            SPACING,
            mesh,
            GaussianPSF(sigma_um=(SIGMA,) * 3),
            FitConfig(),
            frozen=np.zeros(len(mesh.verts)),
        )
