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


# ---------------------------------------------------------------------------------------------
# change_cells: cells added and removed while a fit runs, the other cells going on as they are
# ---------------------------------------------------------------------------------------------
SPURIOUS = np.array([4.5, 4.8, 8.1])  # between the two shells: no membrane there


def _start_mesh():
    """Cell 1 too small on the first shell, cell 2 a sphere where the image has no cell."""
    return merge_meshes([icosphere(CENTRES[0], 1.5, 3), icosphere(SPURIOUS, 1.0, 3)])


def _sphere_volume(r):
    return 4.0 / 3.0 * np.pi * r**3


def test_change_cells_between_steps_keeps_the_others_and_the_fit_goes_on():
    from deltamic_core.pipeline.cells import change_cells

    config = FitConfig(iterations=30, levels=(1,), target_edge_um=None, share_membranes=False)
    fitter = Fitter(_shell_image(), SPACING, _start_mesh(), GaussianPSF(sigma_um=(SIGMA,) * 3), config)
    fitter.run(6)
    before = fitter.current_mesh()
    new, source, added, notes = change_cells(before, add=([CENTRES[1]], [1.8]), remove=[2], spacing_um=SPACING)
    assert added == [2] and notes == []
    np.testing.assert_array_equal(new.verts[source >= 0], before.verts[source[source >= 0]])
    fitter.set_mesh(new, source)
    after = fitter.current_mesh()
    assert fitter.iteration == 6  # not restarted
    # cell 1: the same vertices, bitwise, and the same triangles
    s0, s1 = cell_surface(before, 1), cell_surface(after, 1)
    np.testing.assert_array_equal(s1.verts, s0.verts)
    np.testing.assert_array_equal(s1.faces, s0.faces)
    # the spurious cell is gone, the new sphere is where it was asked for
    assert sorted(int(c) for c in np.unique(after.labels) if c > 0) == [1, 2]
    assert np.linalg.norm(after.verts - SPURIOUS, axis=1).min() > 1.2
    new_cell = cell_surface(after, 2)
    np.testing.assert_allclose(new_cell.verts.mean(axis=0), CENTRES[1], atol=0.05)
    assert _volume(after, 2) == pytest.approx(_sphere_volume(1.8), rel=0.05)
    # the fit goes on to the end of its iterations, the loss down, the new cell to its shell
    result = fitter.run()
    assert result.iterations == 30
    losses = result.loss_history[6:]
    assert losses[-1] < 0.8 * losses[0]
    true_v = _sphere_volume(RADII[1])
    assert abs(_volume(result.mesh, 2) - true_v) < 0.5 * abs(_sphere_volume(1.8) - true_v)
    assert trimesh.Trimesh(*(lambda s: (s.verts, s.faces))(cell_surface(result.mesh, 2)), process=False).is_watertight


def test_change_cells_refuses_seeds_it_cannot_place():
    from deltamic_core.pipeline.cells import change_cells

    mesh = _start_mesh()
    centres = [CENTRES[0], SPURIOUS + [0.0, 0.0, 1.1], [4.5, 4.8, 30.0], CENTRES[1]]
    out, source, added, notes = change_cells(
        mesh, add=(centres, [1.0, 1.0, 1.0, 3.0]), spacing_um=SPACING, bounds_um=((0, 0, 0), (9.0, 9.6, 16.2))
    )
    assert added == [None, None, None, 3]
    assert "inside cell 1" in notes[0]
    assert "smaller than a voxel" in notes[1]  # 0.1 um from cell 2's surface
    assert "outside the image" in notes[2]
    # a sphere asked larger than the room it has is shrunk clear of cell 2 (0.9 x the distance)
    gap = np.linalg.norm(mesh.verts - CENTRES[1], axis=1).min()
    r_new = np.linalg.norm(cell_surface(out, 3).verts - CENTRES[1], axis=1)
    assert r_new.max() < 0.95 * gap and np.median(r_new) == pytest.approx(0.9 * gap, rel=0.02)
    np.testing.assert_array_equal(out.verts[: len(mesh.verts)], mesh.verts)
    np.testing.assert_array_equal(source[: len(mesh.verts)], np.arange(len(mesh.verts)))
    with pytest.raises(InputError, match="not a cell"):
        change_cells(mesh, remove=[5], spacing_um=SPACING)


def test_changes_posted_to_a_running_fit_steps_apply_before_the_next_step():
    from deltamic_core.pipeline import FitJob, InitSpec, PSFSpec, fit_steps, prepare
    from deltamic_core.pipeline.cells import CellChange, changes_queue

    job = FitJob(
        image_data=_shell_image(),
        spacing_um=SPACING,
        init=InitSpec("mesh", data=_start_mesh()),
        psf=PSFSpec("gaussian", {"sigma_um": (SIGMA,) * 3}),
        iterations=12,
        levels=(1,),
        progress=False,
    )
    holder: dict = {}
    steps = fit_steps(prepare(job), holder)
    for _ in range(3):
        first = next(steps)
    n_faces_1 = int((first.labels == 1).any(axis=1).sum())
    bad = CellChange(remove=(7,))
    change = CellChange(add_centres=np.array([CENTRES[0], CENTRES[1]]), add_radii=np.array([1.0, 1.8]), remove=(2,))
    changes_queue(holder).put(bad)
    changes_queue(holder).put(change)
    step = next(steps)
    assert bad.done.is_set() and "not a cell" in bad.error
    assert change.done.is_set() and change.error is None
    assert change.added == [None, 2] and "inside cell 1" in change.notes[0]
    assert step.iteration == 4 and sorted(int(c) for c in np.unique(step.labels) if c > 0) == [1, 2]
    assert int((step.labels == 1).any(axis=1).sum()) == n_faces_1
    rest = list(steps)
    assert rest[-1].iteration == 12 and rest[-1].loss < step.loss


def test_set_mesh_with_the_same_mesh_goes_on_as_if_nothing_happened():
    """The optimiser state carries over: a fit handed its own mesh (every vertex continuing
    itself) follows the uninterrupted fit's path; with fresh moments (source None) it does not."""
    config = FitConfig(iterations=6, levels=(1,), target_edge_um=None, share_membranes=False)
    args = (_shell_image(), SPACING, _start_mesh(), GaussianPSF(sigma_um=(SIGMA,) * 3), config)
    straight, carried, fresh = Fitter(*args), Fitter(*args), Fitter(*args)
    straight.run(6)
    for fitter, source in ((carried, "same"), (fresh, None)):
        fitter.run(3)
        mesh = fitter.current_mesh()
        fitter.set_mesh(mesh, np.arange(len(mesh.verts)) if source == "same" else None)
        fitter.run(3)
    want = straight.current_mesh().verts
    np.testing.assert_allclose(carried.current_mesh().verts, want, rtol=0, atol=1e-8)
    np.testing.assert_allclose(carried.result().loss_history, straight.result().loss_history, rtol=1e-9)
    assert np.abs(fresh.current_mesh().verts - want).max() > 1e-3
