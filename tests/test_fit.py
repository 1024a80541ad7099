"""End-to-end behaviour of the Fitter on small synthetic stacks with known answers.

The sphere image is the closed-form blur of a spherical shell by an isotropic Gaussian (no
renderer involved), so recovering its radius and centre checks the whole chain (renderer,
photometric solve, preconditioned optimiser, coarse-to-fine) against analytic truth.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from deltamic_core.fit import FitConfig, Fitter
from deltamic_core.geometry import icosphere
from deltamic_core.mesh import Mesh
from deltamic_core.psf import GaussianPSF

SPACING = 1.0
SHAPE = (16, 16, 16)
CENTRE = np.array([7.6, 8.1, 7.9])
R0 = 4.0
SIGMA = 1.2


def shell_image(shape, spacing, centre, radius, sigma):
    """Exact image of a uniform spherical shell (unit surface density) blurred by an isotropic
    Gaussian: the radial profile R / (r sigma sqrt(2 pi)) [g(r - R) - g(r + R)]."""
    axes = [np.arange(n) * spacing for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    r = np.maximum(r, 1e-9)
    g = lambda d: np.exp(-(d**2) / (2 * sigma**2))
    return radius / (r * sigma * np.sqrt(2 * np.pi)) * (g(r - radius) - g(r + radius))


def fit_sphere_lstsq(points):
    """Algebraic least-squares sphere: |p|^2 = 2 c.p + (r^2 - |c|^2)."""
    a = np.c_[2 * points, np.ones(len(points))]
    sol, *_ = np.linalg.lstsq(a, (points**2).sum(1), rcond=None)
    c = sol[:3]
    return c, np.sqrt(sol[3] + c @ c)


def surface_radius(verts, faces, centre):
    """Area-weighted mean distance of the surface from ``centre``: 3-point (degree-2 exact)
    quadrature on each triangle. Unlike the vertex radius it does not depend on how coarse the
    polyhedron is (its vertices sit outside a sphere that its faces straddle)."""
    a, b, c = (verts[faces[:, i]] - centre for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    pts = [(2 * a + 0.5 * (b + c)) / 3, (2 * b + 0.5 * (a + c)) / 3, (2 * c + 0.5 * (a + b)) / 3]
    r = sum(np.linalg.norm(p, axis=1) for p in pts) / 3
    return float((r * area).sum() / area.sum())


def mesh_volume(verts, faces):
    a, b, c = (verts[faces[:, i]] for i in range(3))
    return abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def ellipsoid_distance(points, axes):
    """Exact Euclidean distance from points to an axis-aligned ellipsoid centred at 0: the
    closest point is x_i = p_i a_i^2 / (a_i^2 + t), with t solving sum (p_i a_i / (a_i^2 + t))^2 = 1
    (monotone in t; bisection)."""
    a2 = np.asarray(axes, float) ** 2
    p = np.asarray(points, float)
    h = lambda t: ((p * np.sqrt(a2) / (a2 + t[:, None])) ** 2).sum(1) - 1
    lo = np.full(len(p), -a2.min() + 1e-12)
    hi = np.full(len(p), np.linalg.norm(p, axis=1) * np.sqrt(a2.max()) + 1.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        pos = h(mid) > 0
        lo = np.where(pos, mid, lo)
        hi = np.where(pos, hi, mid)
    t = 0.5 * (lo + hi)
    closest = p * a2 / (a2 + t[:, None])
    return np.linalg.norm(p - closest, axis=1)


@pytest.fixture(scope="module")
def sphere_fit():
    img = 100.0 * shell_image(SHAPE, SPACING, CENTRE, R0, SIGMA) + 10.0
    init = icosphere(CENTRE + np.array([1.0, 0.0, 0.0]), 0.7 * R0, subdivisions=2)
    cfg = FitConfig(levels=(2, 1), iterations=(25, 20))
    fitter = Fitter(img, SPACING, init, GaussianPSF(sigma_um=SIGMA), cfg)
    return fitter.run()


def test_sphere_radius_and_centre_are_recovered(sphere_fit):
    verts = sphere_fit.mesh.verts
    assert np.all(np.isfinite(verts))
    c, _ = fit_sphere_lstsq(verts)
    assert np.linalg.norm(c - CENTRE) < 0.1, c - CENTRE
    r = surface_radius(verts, sphere_fit.mesh.faces, c)
    assert abs(r / R0 - 1) < 0.02, r


def test_sphere_loss_decreases(sphere_fit):
    h = np.asarray(sphere_fit.loss_history)
    levels = np.asarray(sphere_fit.level_history)
    fine = h[levels == levels.max()]
    coarse = h[levels == levels.min()]
    assert coarse[-1] < 0.1 * coarse[0]
    assert fine[-1] <= fine[0]
    assert sphere_fit.gain > 0 and sphere_fit.iterations == 45
    assert sphere_fit.backend


@pytest.mark.slow
def test_ellipsoid_from_sphere_mean_distance_below_half_voxel():
    from deltamic_core.render import Renderer

    axes = np.array([3.0, 4.5, 3.5])
    psf = GaussianPSF(sigma_um=(1.2, 0.8, 0.8))
    fine = icosphere((0, 0, 0), 1.0, subdivisions=4)
    truth = Mesh(fine.verts * axes + CENTRE, fine.faces)
    rend = Renderer(SHAPE, SPACING, psf, dtype=torch.float64)
    img = rend.render(torch.as_tensor(truth.verts), torch.as_tensor(truth.faces)).detach().numpy() * 50 + 5
    init = icosphere(CENTRE, 3.0, subdivisions=2)
    res = Fitter(img, SPACING, init, psf, FitConfig(levels=(2, 1), iterations=(30, 20))).run()
    d = ellipsoid_distance(res.mesh.verts - CENTRE, axes)
    assert d.mean() < 0.5 * SPACING, d.mean()
    vol_true = 4 / 3 * np.pi * axes.prod()
    assert abs(mesh_volume(res.mesh.verts, res.mesh.faces) / vol_true - 1) < 0.05


def _small_fitter(iterations=(4, 4), learn=False):
    img = 100.0 * shell_image(SHAPE, SPACING, CENTRE, R0, SIGMA) + 10.0
    init = icosphere(CENTRE, 0.8 * R0, subdivisions=1)
    more = {"learn_psf": True, "photometric": "learn"} if learn else {}
    cfg = FitConfig(levels=(2, 1), iterations=iterations, **more)
    return Fitter(img, SPACING, init, GaussianPSF(sigma_um=1.2 * SIGMA if learn else SIGMA), cfg)


def test_stop_and_resume_matches_an_uninterrupted_run():
    ref = _small_fitter().run()
    fitter = _small_fitter()
    seen = []

    def cb(step):
        seen.append(step.iteration)
        if step.iteration == 3:
            fitter.stop()

    part = fitter.run(callback=cb)
    assert part.iterations == 3 and seen == [1, 2, 3] and not fitter.done
    part = fitter.run(n=2)  # explicit count, crossing into the next level
    assert part.iterations == 5 and part.level_history == [0, 0, 0, 0, 1]
    final = fitter.run(callback=lambda s: None)
    assert fitter.done and final.iterations == 8
    np.testing.assert_allclose(final.loss_history, ref.loss_history, rtol=1e-6)
    np.testing.assert_allclose(final.mesh.verts, ref.mesh.verts, atol=1e-9)
    with pytest.raises(RuntimeError, match="complete"):
        fitter.step()


def test_callback_false_and_stop_from_another_thread():
    fitter = _small_fitter(iterations=(50, 50))
    res = fitter.run(callback=lambda s: s.iteration < 2)
    assert res.iterations == 2
    started = threading.Event()
    out = {}

    def worker():
        out["res"] = fitter.run(callback=lambda s: started.set())

    t = threading.Thread(target=worker)
    t.start()
    assert started.wait(60)
    fitter.stop()
    t.join(60)
    assert not t.is_alive()
    assert 2 < out["res"].iterations < 100
    assert np.all(np.isfinite(out["res"].mesh.verts))


def test_cancel_abandons_the_step_at_each_stage_and_the_fit_goes_on_unchanged(monkeypatch):
    """cancel() arriving during a step (here from the renderer itself, as a Stop click from the
    UI thread would) abandons it at the next stage boundary: before the backward pass, after
    it, or while a level's plan is built. The state is that of the last completed step, so
    the fit then continues exactly as an uninterrupted one."""
    import deltamic_core.render as render
    from deltamic_core.fit import FitCancelled

    ref = _small_fitter().run()
    fitter = _small_fitter()
    fitter.cancel()  # before any step: the first step raises, nothing is built
    with pytest.raises(FitCancelled):
        fitter.step()
    assert fitter.iteration == 0 and fitter.renderer is None

    # while the first level's render plan is built
    real = render.Renderer

    def cancelling_renderer(*args, **kwargs):
        fitter.cancel()
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "Renderer", cancelling_renderer)
    with pytest.raises(FitCancelled):
        fitter.step()
    assert fitter.iteration == 0 and fitter.renderer is None
    monkeypatch.setattr(render, "Renderer", real)
    fitter.step()
    before = fitter.current_mesh().verts

    # during the forward render (the check before the backward pass), then during the backward
    # (the gradient of the vertices is being computed: the check after it)
    level = fitter._level
    render_once = level.renderer.render

    def cancelling_render(*args, **kwargs):
        fitter.cancel()
        return render_once(*args, **kwargs)

    original = torch.Tensor.backward
    backward_calls = []

    def counted_backward(self, *args, **kwargs):
        backward_calls.append(1)
        return original(self, *args, **kwargs)

    level.renderer.render = cancelling_render
    monkeypatch.setattr(torch.Tensor, "backward", counted_backward)
    with pytest.raises(FitCancelled):
        fitter.step()
    level.renderer.render = render_once
    assert backward_calls == []  # abandoned before the backward pass
    assert fitter.iteration == 1
    np.testing.assert_array_equal(fitter.current_mesh().verts, before)

    def cancelling_backward(self, *args, **kwargs):
        original(self, *args, **kwargs)
        fitter.cancel()

    monkeypatch.setattr(torch.Tensor, "backward", cancelling_backward)
    with pytest.raises(FitCancelled):
        fitter.step()
    monkeypatch.setattr(torch.Tensor, "backward", original)
    assert fitter.iteration == 1
    np.testing.assert_array_equal(fitter.current_mesh().verts, before)

    final = fitter.run()
    assert fitter.done and final.iterations == 8 and final.n_rollbacks == 0
    np.testing.assert_allclose(final.loss_history, ref.loss_history, rtol=1e-6)
    np.testing.assert_allclose(final.mesh.verts, ref.mesh.verts, atol=1e-9)


def test_cancel_during_a_level_change_mesh_rebuild_keeps_the_finished_level():
    """A Stop arriving while the next level rebuilds its mesh (shared membranes, remesh: the
    slow part of a level change) abandons the change before it installs anything: the fit is
    still on the finished level, and then continues exactly as an uninterrupted one."""
    from deltamic_core.fit import FitCancelled

    ref = _small_fitter().run()
    fitter = _small_fitter()
    for _ in range(4):
        fitter.step()
    level, before = fitter._level, fitter.current_mesh().verts
    share = fitter._share_membranes
    calls = []

    def cancelling_share(*args, **kwargs):
        calls.append(1)
        fitter.cancel()
        return share(*args, **kwargs)

    fitter._share_membranes = cancelling_share
    with pytest.raises(FitCancelled):
        fitter.step()
    del fitter._share_membranes
    assert calls == [1]
    assert fitter._level is level and fitter.iteration == 4
    np.testing.assert_array_equal(fitter.current_mesh().verts, before)
    final = fitter.run()
    assert fitter.done and final.iterations == 8
    np.testing.assert_allclose(final.loss_history, ref.loss_history, rtol=1e-6)
    np.testing.assert_allclose(final.mesh.verts, ref.mesh.verts, atol=1e-9)


def _touching_pair_fitter():
    """Two overlapping spheres as two cells on a (2, 1) fit: entering level 1 rebuilds them as
    one mesh with a shared membrane (label image, surface nets, junction resampling, remesh
    patch by patch, snap back: the slow part of a level change)."""
    from deltamic_core.geometry import merge_meshes

    a, b = np.array([8.0, 8.0, 6.0]), np.array([8.0, 8.0, 10.5])
    img = 100.0 * (shell_image(SHAPE, SPACING, a, 3.0, SIGMA) + shell_image(SHAPE, SPACING, b, 3.0, SIGMA)) + 10.0
    init = merge_meshes([icosphere(a, 3.0, subdivisions=2), icosphere(b, 3.0, subdivisions=2)])
    cfg = FitConfig(levels=(2, 1), iterations=(2, 2), share_membranes=True)
    return Fitter(img, SPACING, init, GaussianPSF(sigma_um=SIGMA), cfg)


def test_a_stop_inside_the_membrane_rebuild_abandons_the_rest_and_the_resumed_fit_rebuilds(monkeypatch):
    """cancel() arriving in the middle of a level change's membrane rebuild (here: when its
    surface nets are done, as a Stop click from the UI thread would) abandons the remaining
    work at its next cancellation point (no patch is remeshed any more); the fit is still on
    the finished level with its last step's mesh, and going on builds the level, shared
    membranes included, exactly as an uninterrupted fit does."""
    import sys

    from deltamic_core.fit import FitCancelled

    ref = _touching_pair_fitter()
    for _ in range(3):
        expected = ref.step()
    assert expected.level == 1 and (expected.labels > 0).all(axis=1).any()  # the rebuild shares a membrane

    fitter = _touching_pair_fitter()
    for _ in range(2):
        fitter.step()
    level, before = fitter._level, fitter.current_mesh()
    seed_mod, remesh_mod = sys.modules["deltamic_core.geometry.seed"], sys.modules["deltamic_core.geometry.remesh"]
    nets, patch = seed_mod.surface_nets, remesh_mod._remesh_patch
    patches = []

    def stop_after_nets(*args, **kwargs):
        out = nets(*args, **kwargs)
        fitter.cancel()
        return out

    def counted_patch(*args, **kwargs):
        patches.append(1)
        return patch(*args, **kwargs)

    monkeypatch.setattr(seed_mod, "surface_nets", stop_after_nets)
    monkeypatch.setattr(remesh_mod, "_remesh_patch", counted_patch)
    with pytest.raises(FitCancelled):
        fitter.step()
    assert patches == []  # the rest of the rebuild was abandoned
    assert fitter._level is level and fitter.iteration == 2
    np.testing.assert_array_equal(fitter.current_mesh().verts, before.verts)
    np.testing.assert_array_equal(fitter.current_mesh().faces, before.faces)

    monkeypatch.setattr(seed_mod, "surface_nets", nets)
    res = fitter.step()
    assert patches  # built this time
    assert res.level == 1 and res.iteration == 3
    np.testing.assert_array_equal(res.faces, expected.faces)
    np.testing.assert_array_equal(res.labels, expected.labels)
    np.testing.assert_allclose(res.verts, expected.verts, atol=1e-9)


@pytest.mark.parametrize(
    ("make", "at"),
    [
        (_touching_pair_fitter, 1),  # on the first level
        (_touching_pair_fitter, 3),  # after the level change that built shared membranes
        (lambda: _small_fitter(learn=True), 2),  # a learnt PSF and gain/background, their Adams
    ],
    ids=["first-level", "after-rebuild", "learnt-psf"],
)
def test_a_fit_exported_and_loaded_in_a_new_fitter_goes_on_as_the_uninterrupted_one(make, at):
    """export_state after some steps, pickled (as it travels to the fit server), loaded into a
    new Fitter of the same job: the rest of the fit is the uninterrupted fit's, step for step."""
    import pickle

    ref = make().run()
    first = make()
    for _ in range(at):
        first.step()
    state = pickle.loads(pickle.dumps(first.export_state()))
    second = make()
    second.load_state(state)
    assert second.iteration == at
    final = second.run()
    assert second.done and final.iterations == ref.iterations and final.n_rollbacks == ref.n_rollbacks
    np.testing.assert_allclose(final.loss_history, ref.loss_history, rtol=1e-6)
    np.testing.assert_array_equal(final.mesh.faces, ref.mesh.faces)
    np.testing.assert_allclose(final.mesh.verts, ref.mesh.verts, atol=1e-8)
    assert final.psf_params.keys() == ref.psf_params.keys()
    np.testing.assert_allclose(final.psf_params["sigma_um"], ref.psf_params["sigma_um"], rtol=1e-6)
    assert (final.gain, final.background) == pytest.approx((ref.gain, ref.background))
    with pytest.raises(ValueError, match="not taken a step"):
        second.load_state(state)
    with pytest.raises(ValueError, match="taken a step"):
        make().export_state()


@pytest.mark.slow
def test_learn_psf_recovers_gaussian_sigma():
    true_sigma = SIGMA
    img = 200.0 * shell_image(SHAPE, SPACING, CENTRE, R0, true_sigma) + 5.0
    init = icosphere(CENTRE + np.array([0.3, 0.0, 0.0]), 0.95 * R0, subdivisions=2)
    cfg = FitConfig(levels=(1,), iterations=40, learn_psf=True, psf_lr=0.03, lr=0.1)
    res = Fitter(img, SPACING, init, GaussianPSF(sigma_um=0.8 * true_sigma), cfg).run()
    sigma = np.asarray(res.psf_params["sigma_um"], float)
    np.testing.assert_allclose(sigma, true_sigma, rtol=0.10)


def test_fitter_rejects_bad_arguments():
    init = icosphere(CENTRE, 3.0, subdivisions=1)
    img = np.zeros(SHAPE)
    psf = GaussianPSF(sigma_um=1.0)
    with pytest.raises(ValueError, match="3D"):
        Fitter(np.zeros((4, 4)), 1.0, init, psf)
    with pytest.raises(ValueError, match="NaN"):
        Fitter(np.full(SHAPE, np.nan), 1.0, init, psf)
    with pytest.raises(ValueError, match="spacing_um"):
        Fitter(img, (1.0, -1.0, 1.0), init, psf)
    with pytest.raises(TypeError, match="init_mesh"):
        Fitter(img, 1.0, (init.verts, init.faces), psf)
    with pytest.raises(TypeError, match="psf"):
        Fitter(img, 1.0, init, "gaussian")
    with pytest.raises(TypeError, match="config"):
        Fitter(img, 1.0, init, psf, {"lr": 1})
    with pytest.raises(ValueError, match="face_weights"):
        Fitter(img, 1.0, init, psf, face_weights=np.ones(3))
    with pytest.raises(ValueError, match="negative"):
        Fitter(img - 1.0, 1.0, init, psf, FitConfig(loss="poisson"))


def test_touching_cells_from_two_spheres_end_with_one_shared_membrane():
    """Two cells sharing a flat membrane (a ball cut in two, as one multi-material mesh with the
    shared sheet at intensity 2), fitted from two separate spheres: after the first level the
    fitter rebuilds them as one mesh with a shared sheet (FitConfig.share_membranes), so the
    result has shared faces, no double membrane, and both volumes close to the truth."""
    from deltamic_core.geometry import label_image, measure, meshes_from_labels, seed_spheres
    from deltamic_core.render import Renderer

    shape, spacing = (24, 24, 30), (1.0, 1.0, 1.0)
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    c = np.array([11.5, 11.5, 14.5])
    inside = (z - c[0]) ** 2 + (y - c[1]) ** 2 + ((x - c[2]) / 1.3) ** 2 <= 7.5**2
    labels = np.where(inside, np.where(x < c[2], 1, 2), 0).astype(np.int32)
    truth = meshes_from_labels(labels, spacing, 1.5, shared=True)
    assert bool((truth.labels > 0).all(axis=1).any())
    psf = GaussianPSF(sigma_um=(1.0, 1.0, 1.0))
    with torch.no_grad():
        img = Renderer(shape, spacing, psf).render(
            torch.tensor(truth.verts, dtype=torch.float32),
            torch.tensor(truth.faces),
            torch.tensor(truth.face_intensity(), dtype=torch.float32),
        )
    m_true = measure(truth)
    vol_true = dict(zip(m_true["cell"], m_true["volume_um3"]))
    init = seed_spheres(np.asarray(m_true["centroid"]), [4.0, 4.0], edge_um=1.5)
    cfg = FitConfig(levels=(2, 1), iterations=(60, 30), target_edge_um=1.5)
    res = Fitter(img.numpy(), spacing, init, GaussianPSF(sigma_um=(1.0, 1.0, 1.0)), cfg).run()
    out = res.mesh
    assert bool((out.labels > 0).all(axis=1).any()), "no shared membrane after the fit"
    m = measure(out)
    for cell, vol in zip(m["cell"], m["volume_um3"]):
        assert abs(vol / vol_true[cell] - 1) < 0.05, (cell, vol, vol_true[cell])
    lab = label_image(out, shape, spacing)
    for cell in (1, 2):
        a, b = lab == cell, labels == cell
        assert (a & b).sum() / (a | b).sum() > 0.85


# ---------------------------------------------------------------------------------------------
# 11. API edges
# ---------------------------------------------------------------------------------------------
def test_case11_api_edges():
    import torch

    from deltamic_core.fit import FitConfig, Fitter
    from deltamic_core.geometry import icosphere
    from deltamic_core.psf import GaussianPSF
    from deltamic_core.render import Renderer

    psf = GaussianPSF(sigma_um=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="whole numbers"):
        Renderer((24.5, 32, 32), (1, 1, 1), psf)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Renderer((8, 8, 8), (1, 1, 1), psf, device="cuda")
        with pytest.raises(ValueError, match="no CUDA device"):
            Fitter(np.random.rand(8, 8, 8), (1, 1, 1), icosphere((4, 4, 4), 2, 1), psf, FitConfig(device="cuda"))
    with pytest.raises(ValueError, match="adds up to 0"):
        FitConfig(iterations=0)
    with pytest.raises(ValueError, match="constant"):
        Fitter(np.ones((8, 8, 8)), (1, 1, 1), icosphere((4, 4, 4), 2, 1), psf, FitConfig(iterations=1))
    f = Fitter(
        np.random.default_rng(0).random((12, 12, 12)),
        (1, 1, 1),
        icosphere((6, 6, 6), 3, 1),
        psf,
        FitConfig(iterations=1, levels=(1,)),
    )
    f.run()
    res = f.run()  # a complete fit: returns at once
    assert res.iterations == 1


# ---------------------------------------------------------------------------------------------
# the coarse level's reach (FitConfig.reach_overlap)
# ---------------------------------------------------------------------------------------------
REACH_SHAPE, REACH_SPACING, REACH_R, REACH_SIGMA = (64, 64, 64), 0.4, 7.0, 0.3
REACH_CENTRE = np.array([12.6, 12.8, 12.7])


@pytest.fixture(scope="module")
def far_shell():
    return 100.0 * shell_image(REACH_SHAPE, REACH_SPACING, REACH_CENTRE, REACH_R, REACH_SIGMA) + 10.0


@pytest.mark.parametrize("reach", [0.1, 0.0])
def test_the_first_level_reaches_membranes_its_own_blur_does_not(far_shell, reach):
    """A seed sphere of half the cell's radius, 3.5 um inside its membrane: the first level's
    own blur (0.4 um) cannot see the membrane, so the model and the data do not overlap, the
    solved gain collapses and the fit stays at the seed (reach off: radius 3.46 um). With the
    reach the level starts wider (the blur grows until the model overlaps the data, here 1.35
    um), narrows back to its own once converged, and ends on the shell (analytic 7 um)."""
    init = icosphere(REACH_CENTRE, 0.5 * REACH_R, subdivisions=2)
    cfg = FitConfig(levels=(4, 1), iterations=(40, 0), coarse_blur=0.25, reach_overlap=reach)
    fitter = Fitter(far_shell, REACH_SPACING, init, GaussianPSF(sigma_um=REACH_SIGMA), cfg)
    res = fitter.run()
    radius = surface_radius(res.mesh.verts, res.mesh.faces, REACH_CENTRE)
    if reach == 0:  # the fixed point this guards against
        assert abs(radius - 0.5 * REACH_R) < 0.1, radius
        return
    assert abs(radius - REACH_R) < 0.1, radius
    blurs = [b for _, b, _ in fitter._overlap_log]
    assert max(blurs) > 2 * blurs[0] and blurs[-1] == blurs[0]  # wider, then back to its own


def test_a_seed_with_no_membrane_in_reach_is_named_in_a_warning(far_shell):
    """Cell 2's seed lies in empty background: no blur makes its model overlap the data, so the
    fit warns, naming the cell, instead of silently keeping it where it started."""
    from deltamic_core.geometry import seed_spheres

    init = seed_spheres([REACH_CENTRE, [3.5, 3.5, 3.5]], [0.6 * REACH_R, 2.0], subdivisions=2)
    cfg = FitConfig(levels=(4, 1), iterations=(2, 0))
    fitter = Fitter(far_shell, REACH_SPACING, init, GaussianPSF(sigma_um=REACH_SIGMA), cfg)
    with pytest.warns(RuntimeWarning, match=r"cell 2: the initial surface is too far from the membranes"):
        fitter.step()


def test_coarse_level_remesh_is_not_coarser_than_the_seeds():
    """``target_edge_um`` scales with a coarse level's factor, but a coarse level never remeshes
    the seeds coarser than their own tessellation (4 x the target would leave a small cell a
    few dozen faces); the full-resolution level gets the target itself."""
    from deltamic_core.geometry import seed_spheres
    from deltamic_core.geometry.ops import edge_lengths

    shape, spacing = (32, 32, 32), (0.5, 0.5, 0.5)
    centre = np.array([7.9, 8.1, 7.8])
    img = shell_image(shape, 0.5, centre, 4.0, 0.6)
    init = seed_spheres(centre[None], [3.5], edge_um=1.2)
    seed_edge = float(np.mean(edge_lengths(init.verts, init.faces)))
    cfg = FitConfig(levels=(4, 1), iterations=(2, 2), target_edge_um=0.6, share_membranes=False)
    fitter = Fitter(img, spacing, init, GaussianPSF(sigma_um=(0.6, 0.6, 0.6)), cfg)
    fitter.step()
    coarse = fitter.current_mesh()
    e_coarse = float(np.mean(edge_lengths(coarse.verts, coarse.faces)))
    # without the cap: 4 x 0.6 = 2.4 um edges, ~4x fewer faces than the seeds
    assert e_coarse < 1.25 * seed_edge, (e_coarse, seed_edge)
    assert len(coarse.faces) > 0.6 * len(init.faces)
    fitter.step()
    fitter.step()  # the first full-resolution step
    fine = fitter.current_mesh()
    e_fine = float(np.mean(edge_lengths(fine.verts, fine.faces)))
    assert 0.6 * 0.75 < e_fine < 0.6 * 1.25, e_fine


def test_default_fine_edge_follows_the_voxels():
    """With no target edge, a membrane fit on voxels finer than its seeds' tessellation ends on a
    mesh of ``fine_edge_voxels`` x the smallest voxel; ``fine_edge_voxels=0`` keeps the seeds'."""
    from deltamic_core.geometry import seed_spheres
    from deltamic_core.geometry.ops import edge_lengths

    shape, spacing = (48, 48, 48), (0.25, 0.25, 0.25)
    centre = np.array([6.1, 5.9, 6.0])
    img = shell_image(shape, 0.25, centre, 3.5, 0.35)
    init = seed_spheres(centre[None], [3.0], edge_um=1.6)
    seed_edge = float(np.mean(edge_lengths(init.verts, init.faces)))
    edges = {}
    for k in (4.0, 0.0):
        cfg = FitConfig(levels=(2, 1), iterations=(1, 1), fine_edge_voxels=k, share_membranes=False)
        fitter = Fitter(img, spacing, init, GaussianPSF(sigma_um=(0.35, 0.35, 0.35)), cfg)
        fitter.step()
        fitter.step()  # the first full-resolution step
        m = fitter.current_mesh()
        edges[k] = float(np.mean(edge_lengths(m.verts, m.faces)))
    assert 0.75 < edges[4.0] < 1.25, edges  # 4 x 0.25 um
    assert abs(edges[0.0] / seed_edge - 1) < 0.1, (edges, seed_edge)
