"""The building blocks of the fit against independent references (numpy formulas, numpy
lstsq, scipy spsolve, dense eigen-decompositions)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from deltamic_core.fit import (
    FieldStats,
    FitConfig,
    LaplacianPreconditioner,
    ObservedStats,
    VertexAdam,
    block_average,
    intensity_weight,
    mesh_laplacian,
    poisson_nll,
    robust_normalise,
    solve_photometric,
    solve_photometric_field,
    weighted_mse,
)


def _icosphere(subdiv=2, radius=1.0):
    """Small closed test mesh built here (independent of deltamic_core.geometry)."""
    t = (1 + 5**0.5) / 2
    v = [
        (-1, t, 0),
        (1, t, 0),
        (-1, -t, 0),
        (1, -t, 0),
        (0, -1, t),
        (0, 1, t),
        (0, -1, -t),
        (0, 1, -t),
        (t, 0, -1),
        (t, 0, 1),
        (-t, 0, -1),
        (-t, 0, 1),
    ]
    f = [
        (0, 11, 5),
        (0, 5, 1),
        (0, 1, 7),
        (0, 7, 10),
        (0, 10, 11),
        (1, 5, 9),
        (5, 11, 4),
        (11, 10, 2),
        (10, 7, 6),
        (7, 1, 8),
        (3, 9, 4),
        (3, 4, 2),
        (3, 2, 6),
        (3, 6, 8),
        (3, 8, 9),
        (4, 9, 5),
        (2, 4, 11),
        (6, 2, 10),
        (8, 6, 7),
        (9, 8, 1),
    ]
    verts = [np.array(p, float) / np.linalg.norm(p) for p in v]
    faces = f
    for _ in range(subdiv):
        cache = {}
        new_faces = []

        def mid(a, b, cache=cache):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return np.array(verts) * radius, np.array(faces, dtype=np.int64)


# ----------------------------------------------------------------------------- losses
def test_robust_normalise_matches_numpy_percentiles():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 3.0, size=(8, 9, 10))
    out = robust_normalise(torch.from_numpy(img), 2.0, 98.0).numpy()
    lo, hi = np.percentile(img, [2.0, 98.0])
    np.testing.assert_allclose(out, np.clip((img - lo) / (hi - lo), 0, 1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha,floor", [(1.0, 0.0), (2.0, 0.1), (0.5, 0.05)])
def test_intensity_weight_is_floor_plus_normalised_power(alpha, floor):
    rng = np.random.default_rng(1)
    img = rng.normal(10, 3, size=(6, 7, 8))
    w = intensity_weight(torch.from_numpy(img), alpha, floor=floor, low_pct=1, high_pct=99).numpy()
    lo, hi = np.percentile(img, [1, 99])
    n = np.clip((img - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(w, floor + (1 - floor) * n**alpha, rtol=1e-10, atol=1e-12)


def test_intensity_weight_alpha_zero_means_uniform():
    assert intensity_weight(torch.ones(3, 3, 3), 0.0) is None
    with pytest.raises(ValueError, match="alpha"):
        intensity_weight(torch.ones(3, 3, 3), -1.0)


def test_weighted_mse_matches_numpy():
    rng = np.random.default_rng(2)
    m, o, w = rng.normal(size=(3, 5, 6, 7))
    w = np.abs(w)
    got = float(weighted_mse(torch.from_numpy(m), torch.from_numpy(o), torch.from_numpy(w)))
    assert got == pytest.approx(np.sum(w * (m - o) ** 2) / np.sum(w), rel=1e-12)
    got_plain = float(weighted_mse(torch.from_numpy(m), torch.from_numpy(o)))
    assert got_plain == pytest.approx(np.mean((m - o) ** 2), rel=1e-12)


def test_poisson_nll_matches_numpy_and_floors_the_model():
    rng = np.random.default_rng(3)
    lam = rng.uniform(0.5, 20, size=(4, 5, 6))
    counts = rng.poisson(lam).astype(float)
    model = lam.copy()
    model[0, 0, :3] = [-1.0, 0.0, 1e-6]  # must be floored, not produce NaN
    got = float(poisson_nll(torch.from_numpy(model), torch.from_numpy(counts), floor=1e-3))
    m = np.maximum(model, 1e-3)
    assert got == pytest.approx(np.mean(m - counts * np.log(m)), rel=1e-12)
    # the minimiser over a constant model is the mean count (Poisson MLE)
    grid = np.linspace(counts.mean() * 0.8, counts.mean() * 1.2, 401)
    vals = [
        float(poisson_nll(torch.full(counts.shape, g, dtype=torch.float64), torch.from_numpy(counts))) for g in grid
    ]
    assert grid[int(np.argmin(vals))] == pytest.approx(counts.mean(), rel=2e-3)


def test_poisson_nll_gradient_is_finite_with_negative_model():
    model = torch.tensor([[[-2.0, 0.5, 3.0]]], dtype=torch.float64, requires_grad=True)
    obs = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    poisson_nll(model, obs).backward()
    assert torch.isfinite(model.grad).all()
    assert model.grad[0, 0, 0] == 0  # floored voxel: no gradient pushing further down


# ----------------------------------------------------------------------------- photometric solve
@pytest.mark.parametrize("weighted", [False, True])
def test_solve_photometric_matches_lstsq(weighted):
    rng = np.random.default_rng(4)
    r = rng.uniform(0, 1, size=(6, 7, 8))
    o = 3.7 * r + 0.4 + 0.05 * rng.normal(size=r.shape)
    w = rng.uniform(0.1, 2.0, size=r.shape) if weighted else np.ones_like(r)
    g, b = solve_photometric(torch.from_numpy(r), torch.from_numpy(o), torch.from_numpy(w) if weighted else None)
    sw = np.sqrt(w.ravel())
    design = np.stack([r.ravel(), np.ones(r.size)], axis=1) * sw[:, None]
    (g_ref, b_ref), *_ = np.linalg.lstsq(design, o.ravel() * sw, rcond=None)
    assert g == pytest.approx(g_ref, rel=1e-9)
    assert b == pytest.approx(b_ref, rel=1e-9, abs=1e-12)
    # the observed image's statistics made once and reused (as the fitter does every step),
    # here for a second render too
    stats = ObservedStats(torch.from_numpy(o), torch.from_numpy(w) if weighted else None)
    for rr in (r, 0.5 * r**2):
        g, b = solve_photometric(
            torch.from_numpy(rr), torch.from_numpy(o), torch.from_numpy(w) if weighted else None, stats=stats
        )
        design = np.stack([rr.ravel(), np.ones(rr.size)], axis=1) * sw[:, None]
        (g_ref, b_ref), *_ = np.linalg.lstsq(design, o.ravel() * sw, rcond=None)
        assert g == pytest.approx(g_ref, rel=1e-9)
        assert b == pytest.approx(b_ref, rel=1e-9, abs=1e-12)


def test_solve_photometric_enforces_positive_gain():
    rng = np.random.default_rng(5)
    r = rng.uniform(0, 1, size=(5, 5, 5))
    o = -2.0 * r + 5.0  # anti-correlated: unconstrained gain would be -2
    g, b = solve_photometric(torch.from_numpy(r), torch.from_numpy(o))
    assert 0 < g < 1e-6
    # background is then the optimum for that gain: the mean residual
    assert b == pytest.approx(np.mean(o - g * r), rel=1e-9)


def test_solve_photometric_float32_inputs_accumulate_in_float64():
    rng = np.random.default_rng(6)
    r = rng.uniform(0, 1, size=(40, 40, 40)).astype(np.float32)
    o = (2.0 * r + 1000.0).astype(np.float32)
    g, b = solve_photometric(torch.from_numpy(r), torch.from_numpy(o))
    assert g == pytest.approx(2.0, rel=1e-3)
    assert b == pytest.approx(1000.0, rel=1e-6)


def _field_design(r):
    z, y, x = np.meshgrid(*[np.linspace(-0.5, 0.5, n) for n in r.shape], indexing="ij")
    return np.stack([r, r * z, np.ones_like(r), z, y, x], axis=-1).reshape(-1, 6), z


@pytest.mark.parametrize("weighted", [False, True])
def test_solve_photometric_field_matches_lstsq(weighted):
    """Depth-linear gain and background plane: numpy lstsq on the six columns (r, r z, 1, z, y,
    x); an image made with a known attenuation and plane gives them back."""
    rng = np.random.default_rng(7)
    r = rng.uniform(0, 1, size=(6, 7, 8))
    design, z = _field_design(r)
    truth = np.array([3.0, -0.9, 0.4, 0.2, -0.15, 0.1])
    o = (design @ truth).reshape(r.shape) + 0.02 * rng.normal(size=r.shape)
    w = rng.uniform(0.1, 2.0, size=r.shape) if weighted else np.ones_like(r)
    stats = FieldStats(torch.from_numpy(o), torch.from_numpy(w) if weighted else None)
    for rr in (r, 0.5 * r**2 + 0.1):  # a second render with the same statistics
        gain, (bz, byx), (g0, b0) = solve_photometric_field(torch.from_numpy(rr), stats)
        bg = bz + byx
        design, _ = _field_design(rr)
        sw = np.sqrt(w.ravel())
        ref, *_ = np.linalg.lstsq(design * sw[:, None], o.ravel() * sw, rcond=None)
        model = (gain * torch.from_numpy(rr) + bg).numpy()
        np.testing.assert_allclose(model.ravel(), design @ ref, rtol=1e-7, atol=1e-9)
        assert g0 == pytest.approx(ref[0], rel=1e-7) and b0 == pytest.approx(ref[2], rel=1e-7, abs=1e-9)
    gain, _, _ = solve_photometric_field(torch.from_numpy(r), stats)
    np.testing.assert_allclose(gain.numpy().ravel(), truth[0] + truth[1] * z[:, 0, 0], rtol=0.02)


def test_solve_photometric_field_keeps_the_gain_positive():
    """A gain that would change sign along z is replaced by the best constant one (the plane kept);
    an anti-correlated render gets the floor gain."""
    rng = np.random.default_rng(8)
    r = rng.uniform(0, 1, size=(5, 6, 7))
    design, z = _field_design(r)
    o = (design @ np.array([0.5, 4.0, 1.0, 0.0, 0.3, 0.0])).reshape(r.shape)  # gain -1.5 .. 2.5
    gain, (bz, byx), _ = solve_photometric_field(torch.from_numpy(r), FieldStats(torch.from_numpy(o)))
    bg = bz + byx
    assert float(gain.min()) > 0 and float(gain.max() - gain.min()) == 0.0
    cols = design[:, [0, 2, 3, 4, 5]]
    ref, *_ = np.linalg.lstsq(cols, o.ravel(), rcond=None)
    np.testing.assert_allclose((gain * torch.from_numpy(r) + bg).numpy().ravel(), cols @ ref, rtol=1e-7, atol=1e-9)
    gain, _, _ = solve_photometric_field(torch.from_numpy(r), FieldStats(torch.from_numpy(5.0 - 2.0 * r)))
    assert 0 < float(gain.max()) < 1e-6


def test_solve_photometric_field_float32_render_keeps_precision():
    """The per-step sums run in the render's dtype (float32 in a fit) per plane, then in float64:
    a large offset does not swamp the gain."""
    rng = np.random.default_rng(9)
    r = rng.uniform(0, 1, size=(40, 40, 40)).astype(np.float32)
    o = (2.0 * r + 1000.0).astype(np.float32)
    gain, (bz, byx), (g0, b0) = solve_photometric_field(torch.from_numpy(r), FieldStats(torch.from_numpy(o)))
    assert g0 == pytest.approx(2.0, rel=1e-3)
    assert b0 == pytest.approx(1000.0, rel=1e-6)
    assert float((gain - 2.0).abs().max()) < 1e-2


# ----------------------------------------------------------------------------- preconditioner
@pytest.mark.parametrize("kind", ["uniform", "cotangent", "robust"])
def test_laplacian_is_symmetric_psd_with_zero_row_sums(kind):
    v, f = _icosphere(2)
    lap = mesh_laplacian(v, f, kind)
    dense = lap.toarray()
    np.testing.assert_allclose(dense, dense.T, atol=1e-10)
    np.testing.assert_allclose(dense.sum(axis=1), 0, atol=1e-9)
    assert np.linalg.eigvalsh(dense).min() > -1e-9


def test_uniform_laplacian_is_degree_minus_adjacency():
    v, f = _icosphere(1)
    lap = mesh_laplacian(v, f, "uniform").toarray()
    adj = np.zeros_like(lap)
    for a, b, c in f:
        for i, j in ((a, b), (b, c), (c, a)):
            adj[i, j] = adj[j, i] = 1
    np.testing.assert_array_equal(lap, np.diag(adj.sum(1)) - adj)


@pytest.mark.parametrize("kind,p", [("uniform", 1), ("uniform", 2), ("cotangent", 1), ("robust", 3)])
def test_preconditioner_solve_matches_spsolve(kind, p):
    v, f = _icosphere(2, radius=5.0)
    pc = LaplacianPreconditioner(v, f, lambda_smooth=3.0, p=p, kind=kind)
    rng = np.random.default_rng(7)
    b = rng.normal(size=(len(v), 3))
    x = pc.solve(torch.from_numpy(b)).numpy()
    lap = mesh_laplacian(v, f, kind)
    if kind != "uniform":
        d_uni = mesh_laplacian(v, f, "uniform").diagonal()
        lap = lap * (d_uni.mean() / lap.diagonal().mean())
    import scipy.sparse as sp

    a1 = sp.identity(len(v)) + 3.0 * lap
    a = a1
    for _ in range(p - 1):
        a = a @ a1
    ref = np.stack([spla.spsolve(a.tocsc(), b[:, k]) for k in range(3)], axis=1)
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-10)
    # round trip through the differential coordinates
    u = pc.to_differential(torch.from_numpy(b))
    np.testing.assert_allclose(pc.solve(u).numpy(), b, rtol=1e-9, atol=1e-9)


def test_preconditioner_damps_high_frequencies_by_the_eigenvalue_factor():
    v, f = _icosphere(2)
    lam, p = 2.0, 2
    pc = LaplacianPreconditioner(v, f, lambda_smooth=lam, p=p)
    evals, evecs = np.linalg.eigh(mesh_laplacian(v, f).toarray())
    for idx in (0, 5, len(evals) - 1):  # constant mode, a smooth mode, the roughest mode
        vec = evecs[:, idx]
        out = pc.solve(torch.from_numpy(np.stack([vec] * 3, 1))).numpy()[:, 0]
        np.testing.assert_allclose(out, vec / (1 + lam * evals[idx]) ** p, atol=1e-10)
    # translation passes unchanged; per-vertex noise is strongly damped
    rng = np.random.default_rng(8)
    shift = np.tile([0.3, -0.2, 1.0], (len(v), 1))
    np.testing.assert_allclose(pc.solve(torch.from_numpy(shift)).numpy(), shift, atol=1e-10)
    noise = rng.normal(size=(len(v), 3))
    damped = pc.solve(torch.from_numpy(noise)).numpy()
    assert np.linalg.norm(damped - damped.mean(0)) < 0.1 * np.linalg.norm(noise - noise.mean(0))


def test_preconditioner_backward_is_the_same_solve():
    v, f = _icosphere(1)
    pc = LaplacianPreconditioner(v, f, lambda_smooth=1.5, p=1)
    u = torch.randn(len(v), 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pc.to_vertices, (u,), eps=1e-6, atol=1e-8)


def test_preconditioner_rejects_bad_arguments():
    v, f = _icosphere(0)
    with pytest.raises(ValueError, match="lambda_smooth"):
        LaplacianPreconditioner(v, f, lambda_smooth=-1)
    with pytest.raises(ValueError, match="p must"):
        LaplacianPreconditioner(v, f, lambda_smooth=1, p=0)
    with pytest.raises(ValueError, match="kind"):
        LaplacianPreconditioner(v, f, lambda_smooth=1, kind="bogus")


# ----------------------------------------------------------------------------- optimiser
def _adam_reference(grads, lr, kind, b1=0.9, b2=0.999, eps=1e-8):
    m1 = np.zeros_like(grads[0])
    m2 = np.zeros_like(grads[0]) if kind == "uniform" else np.zeros(grads[0].shape[:1] + (1,))
    steps = []
    for t, g in enumerate(grads, 1):
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * (g**2 if kind == "uniform" else (g**2).sum(1, keepdims=True))
        m1h, m2h = m1 / (1 - b1**t), m2 / (1 - b2**t)
        denom = np.sqrt(m2h.max()) if kind == "uniform" else np.sqrt(m2h)
        steps.append(-lr * m1h / (denom + eps))
    return steps


@pytest.mark.parametrize("kind", ["uniform", "vector"])
def test_vertex_adam_matches_reference_recursion(kind):
    rng = np.random.default_rng(9)
    grads = [rng.normal(size=(20, 3)) * s for s in (1.0, 0.5, 2.0, 1.0)]
    opt = VertexAdam((20, 3), lr=0.1, kind=kind)
    ref = _adam_reference(grads, 0.1, kind)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(opt.direction(torch.from_numpy(g)).numpy(), r, rtol=1e-12, atol=1e-15)


def test_uniform_adam_first_step_is_gradient_over_its_max():
    g = torch.tensor([[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]], dtype=torch.float64)
    step = VertexAdam((2, 3), lr=0.2, kind="uniform").direction(g)
    torch.testing.assert_close(step, -0.2 * g / 4.0, rtol=1e-6, atol=0)


def test_vertex_adam_state_round_trip():
    opt = VertexAdam((5, 3), lr=0.1)
    opt.direction(torch.ones(5, 3, dtype=torch.float64))
    s = opt.state()
    a = opt.direction(torch.full((5, 3), 2.0, dtype=torch.float64))
    opt.load_state(s)
    b = opt.direction(torch.full((5, 3), 2.0, dtype=torch.float64))
    torch.testing.assert_close(a, b)


def test_param_adam_follows_torch_adam_and_rolls_back():
    """ParamAdam (the PSF and gain optimiser) against torch.optim.Adam on the same gradients,
    including a parameter whose gradient is missing on some steps; a restored state repeats
    the same step."""
    from deltamic_core.fit.optim import ParamAdam

    rng = np.random.default_rng(4)
    a = [torch.tensor(rng.normal(size=s), requires_grad=True) for s in ((3,), (2, 2))]
    b = [t.detach().clone().requires_grad_(True) for t in a]
    ours, ref = ParamAdam(a, lr=0.05), torch.optim.Adam(b, lr=0.05)
    for k in range(12):
        gs = [torch.from_numpy(rng.normal(size=tuple(t.shape))) * (1 + k) for t in a]
        for opt, ps in ((ours, a), (ref, b)):
            opt.zero_grad(set_to_none=True)
            for i, (p, g) in enumerate(zip(ps, gs)):
                if not (i == 1 and k % 3 == 2):  # the second one skips every third step
                    p.grad = g.clone()
            opt.step()
        for p, q in zip(a, b):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)
    snap, at = ours.state_dict(), [p.detach().clone() for p in a]
    g = [torch.ones_like(p) for p in a]

    def one_step():
        for p, gi in zip(a, g):
            p.grad = gi.clone()
        ours.step()
        return [p.detach().clone() for p in a]

    first = one_step()
    with torch.no_grad():
        for p, x in zip(a, at):
            p.copy_(x)
    ours.load_state_dict(snap)
    for x, y in zip(first, one_step()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_fit_does_not_import_torch_dynamo(tmp_path):
    """A whole `deltamic fit` with --learn-psf in a fresh process never imports torch._dynamo
    (torch.optim would: ~3 s of start-up)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, tifffile\n"
        "from deltamic_core.cli import main\n"
        "z, y, x = np.mgrid[:24, :32, :32]\n"
        "r = np.sqrt(((z - 12) * 0.5) ** 2 + ((y - 16) * 0.25) ** 2 + ((x - 16) * 0.25) ** 2)\n"
        "img = (100 * np.exp(-((r - 2.5) ** 2) / (2 * 0.3**2)) + 5).astype(np.float32)\n"
        f"tifffile.imwrite(r'{tmp_path}/img.tif', img)\n"
        f"open(r'{tmp_path}/seeds.csv', 'w').write('z,y,x,radius\\n6,4,4,2\\n')\n"
        f"rc = main(['fit', r'{tmp_path}/img.tif', '--seeds', r'{tmp_path}/seeds.csv', '--spacing', '0.5', "
        "'0.25', '0.25', '--psf', 'gaussian', '--sigma', '0.3', '0.12', '0.12', '--learn-psf', '--iterations', "
        f"'3', '--out', r'{tmp_path}/out', '--quiet'])\n"
        "assert rc in (0, None), rc\n"
        "print('dynamo' if 'torch._dynamo' in sys.modules else 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"


# ----------------------------------------------------------------------------- config and helpers
@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"iterations": -1}, "iterations"),
        ({"levels": (1, 2)}, "levels"),
        ({"levels": (2,)}, "levels"),
        ({"loss": "l1"}, "loss"),
        ({"alpha": -0.5}, "alpha"),
        ({"laplacian": "x"}, "laplacian"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"dtype": "float16"}, "dtype"),
        ({"remesh_every": 5}, "remesh_every"),
        ({"p": 0}, "p"),
        ({"iterations": (10, 10, 10), "levels": (2, 1)}, "iterations"),
        ({"band_threshold": 2}, "band_threshold"),
        ({"reshare_membranes": True}, "reshare_membranes"),
    ],
)
def test_fitconfig_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        FitConfig(**kwargs)


def test_fitconfig_round_trip_and_per_level_iterations():
    cfg = FitConfig(iterations=(30, 70), levels=(2, 1), dtype=torch.float64)
    assert cfg.dtype == "float64" and cfg.torch_dtype == torch.float64
    assert cfg.total_iterations == 100 and cfg.iterations_for_level(1) == 70
    assert FitConfig.from_dict(cfg.as_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        FitConfig.from_dict({"nope": 1})


def test_block_average_matches_numpy():
    rng = np.random.default_rng(10)
    img = rng.normal(size=(7, 9, 10))
    out = block_average(torch.from_numpy(img), 3).numpy()
    ref = img[:6, :9, :9].reshape(2, 3, 3, 3, 3, 3).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    # factor 1 is the identity
    np.testing.assert_array_equal(block_average(torch.from_numpy(img), 1).numpy(), img)


# ----------------------------------------------------------------------------- rollback
def _tiny_fitter(**cfg):
    from deltamic_core.fit import Fitter
    from deltamic_core.mesh import Mesh
    from deltamic_core.psf import GaussianPSF

    v, f = _icosphere(1, radius=2.5)
    v = v + 6.0
    z, y, x = np.meshgrid(*[np.arange(12.0)] * 3, indexing="ij")
    r = np.sqrt((z - 6) ** 2 + (y - 6) ** 2 + (x - 6) ** 2)
    img = np.exp(-((r - 3.0) ** 2) / 2.0)  # a blurred shell of radius 3
    config = FitConfig(**{"iterations": 4, "levels": (1,), **cfg})
    return Fitter(img, 1.0, Mesh(v, f), GaussianPSF(sigma_um=1.0), config)


def test_nan_render_is_rolled_back_with_halved_step():
    fitter = _tiny_fitter()
    fitter.step()
    before = fitter.current_mesh().verts
    lr_before = fitter.lr
    renderer = fitter._level.renderer
    real_render = renderer.render
    calls = {"n": 0}

    def nan_once(*args, **kwargs):
        calls["n"] += 1
        out = real_render(*args, **kwargs)
        return out * float("nan") if calls["n"] == 1 else out

    renderer.render = nan_once
    res = fitter.step()
    assert res.rolled_back and np.isnan(res.loss)
    np.testing.assert_array_equal(res.verts, before)
    np.testing.assert_array_equal(fitter.current_mesh().verts, before)
    assert fitter.lr == pytest.approx(lr_before / 2)
    assert fitter.iteration == 1  # the failed step does not count
    res = fitter.step()  # the retry succeeds and moves on
    assert not res.rolled_back and np.isfinite(res.loss) and fitter.iteration == 2
    final = fitter.run()
    assert np.all(np.isfinite(final.mesh.verts)) and final.n_rollbacks == 1
    assert all(np.isfinite(final.loss_history))


def test_repeated_failures_raise_and_keep_a_finite_mesh():
    from deltamic_core.fit import FitDivergedError

    fitter = _tiny_fitter(max_failures=3)
    fitter.step()
    good = fitter.current_mesh().verts
    renderer = fitter._level.renderer
    renderer.render = lambda *a, **k: torch.full(renderer.shape, float("inf"))
    fitter.step()
    fitter.step()
    with pytest.raises(FitDivergedError, match="diverged"):
        fitter.step()
    np.testing.assert_array_equal(fitter.result().mesh.verts, good)


def test_block_averaged_psf_is_otf_times_mean_of_sample_phases():
    from deltamic_core.fit import BlockAveragedPSF
    from deltamic_core.grid import FFTGrid
    from deltamic_core.psf import GaussianPSF

    inner = GaussianPSF(sigma_um=(0.9, 0.5, 0.4))
    f, s = 3, (0.5, 0.3, 0.3)
    wrapped = BlockAveragedPSF(inner, f, s)
    grid = FFTGrid((10, 12, 14), tuple(x * f for x in s))
    got = wrapped.otf(grid, dtype=torch.float64).detach().numpy()
    base = inner.otf(grid, dtype=torch.float64).detach().numpy()
    box = np.ones_like(base, dtype=complex)
    for axis, k in enumerate(grid.freq_grid()):
        offsets = (np.arange(f) - (f - 1) / 2) * s[axis]
        box = box * np.mean([np.exp(-2j * np.pi * k.numpy() * o) for o in offsets], axis=0)
    np.testing.assert_allclose(got, base * box.real, atol=1e-12)
    assert np.abs(box.imag).max() < 1e-12  # centred block: real transfer function
    assert wrapped.extent_um()[0] > inner.extent_um()[0]
    assert wrapped.as_dict() == inner.as_dict()


def test_blurred_block_averaged_psf_adds_the_gaussian_variances():
    """A Gaussian PSF followed by a Gaussian blur is the Gaussian whose variances add."""
    from deltamic_core.fit import BlockAveragedPSF
    from deltamic_core.grid import FFTGrid
    from deltamic_core.psf import GaussianPSF

    sigma, blur, f, s = np.array([0.9, 0.5, 0.4]), 1.3, 2, (0.5, 0.3, 0.3)
    grid = FFTGrid((12, 14, 16), tuple(x * f for x in s))
    got = BlockAveragedPSF(GaussianPSF(sigma_um=tuple(sigma)), f, s, blur_um=blur).otf(grid, dtype=torch.float64)
    combined = GaussianPSF(sigma_um=tuple(np.sqrt(sigma**2 + blur**2)))
    want = BlockAveragedPSF(combined, f, s).otf(grid, dtype=torch.float64)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), atol=1e-12)
    assert BlockAveragedPSF(GaussianPSF(sigma_um=tuple(sigma)), f, s, blur_um=blur).extent_um()[0] >= 4 * blur


def test_gaussian_blur_of_a_gaussian_blob_adds_the_variances():
    from deltamic_core.fit.levels import gaussian_blur

    spacing, shape, s0, b = (1.0, 0.5, 0.5), (40, 64, 64), 2.0, 1.5
    centre = [(n - 1) * h / 2 for n, h in zip(shape, spacing)]

    def blob(sig):
        axes = [np.arange(n) * h - c for n, h, c in zip(shape, spacing, centre)]
        z, y, x = np.meshgrid(*axes, indexing="ij")
        return np.exp(-(z**2 + y**2 + x**2) / (2 * sig**2)) / (2 * np.pi * sig**2) ** 1.5

    got = gaussian_blur(torch.tensor(blob(s0)), b, spacing).numpy()
    want = blob(np.hypot(s0, b))
    # sampled-Gaussian convolution vs the continuous one: O(1e-4) at >= 2 samples per sigma
    assert np.abs(got - want).max() <= 2e-3 * want.max()
    t = torch.tensor(blob(s0))
    assert gaussian_blur(t, 0.0, spacing) is t  # no blur: the image itself


# ----------------------------------------------------------------------------- schedules and contacts
def test_lambda_smooth_per_level_reaches_each_levels_preconditioner():
    cfg = FitConfig(levels=(2, 1), iterations=(2, 2), lambda_smooth=(4.0, 0.5))
    assert cfg.lambda_for_level(0) == 4.0 and cfg.lambda_for_level(1) == 0.5
    assert FitConfig.from_dict(cfg.as_dict()) == cfg
    # one number: the same on the coarse levels, x lambda_fine_factor at full resolution
    one = FitConfig(lambda_smooth=2.0, lambda_fine_factor=0.25)
    assert [one.lambda_for_level(i) for i in range(3)] == [2.0, 2.0, 0.5]
    assert FitConfig(lambda_smooth=2.0, lambda_fine_factor=1.0).lambda_for_level(2) == 2.0
    with pytest.raises(ValueError, match="lambda_smooth"):
        FitConfig(levels=(2, 1), lambda_smooth=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="lambda_smooth"):
        FitConfig(levels=(2, 1), lambda_smooth=(1.0, -2.0))
    fitter = _tiny_fitter(levels=(2, 1), iterations=(2, 2), lambda_smooth=(4.0, 0.5))
    seen = []
    while not fitter.done:
        res = fitter.step()
        seen.append((res.factor, fitter._precond.lambda_smooth))
    assert sorted(set(seen)) == [(1, 0.5), (2, 4.0)]


def test_close_contact_gaps_fills_thin_gaps_between_cells_only():
    from deltamic_core.fit.fitter import close_contact_gaps

    spacing = (0.5, 0.25, 0.25)
    lab = np.zeros((10, 20, 40), np.int32)
    lab[2:8, 5:15, 3:12] = 1
    lab[2:8, 5:15, 15:25] = 2  # 3 voxels (0.75 um) of background between 1 and 2
    lab[2:8, 5:15, 33:38] = 3  # 8 voxels (2 um) from 2
    out = close_contact_gaps(lab, spacing, 0.75)
    expected = lab.copy()
    expected[2:8, 5:15, 12:14] = 1  # nearer to 1 (x = 12) or equidistant (x = 13, first cell)
    expected[2:8, 5:15, 14] = 2
    np.testing.assert_array_equal(out, expected)
    # a narrower tolerance leaves the 0.75 um gap, a zero one is the identity
    np.testing.assert_array_equal(close_contact_gaps(lab, spacing, 0.5), lab)
    np.testing.assert_array_equal(close_contact_gaps(lab, spacing, 0.0), lab)
    # a single cell is never grown
    single = np.where(lab == 1, 1, 0).astype(np.int32)
    np.testing.assert_array_equal(close_contact_gaps(single, spacing, 5.0), single)


def _two_half_balls_fitter(**cfg):
    """Two cells sharing a flat membrane (a ball of radius 3 cut in half) fitted to a blurred
    shell of radius 3 on a 12^3 grid."""
    from deltamic_core.fit import Fitter
    from deltamic_core.geometry import meshes_from_labels
    from deltamic_core.psf import GaussianPSF

    z, y, x = np.meshgrid(*[np.arange(14.0)] * 3, indexing="ij")
    r = np.sqrt((z - 7) ** 2 + (y - 7) ** 2 + (x - 7) ** 2)
    lab = np.where(r < 3.0, np.where(x < 7, 1, 2), 0).astype(np.int32)
    mesh = meshes_from_labels(lab, 1.0, 1.0, shared=True)
    img = np.exp(-((r - 3.0) ** 2) / 2.0)
    config = FitConfig(**{"iterations": 4, "levels": (1,), **cfg})
    return Fitter(img, 1.0, mesh, GaussianPSF(sigma_um=1.0), config)


def test_tension_adds_its_fraction_of_the_data_loss_and_pulls_the_surface_in():
    from deltamic_core.geometry import face_areas

    plain, tense = _two_half_balls_fitter(), _two_half_balls_fitter(tension=0.5)
    area0 = float(face_areas(tense.current_mesh().verts, tense.current_mesh().faces).sum())
    l_plain, l_tense = plain.step().loss, tense.step().loss
    # first step: same mesh, so the data loss is the same and the area term is half of it
    assert l_tense == pytest.approx(1.5 * l_plain, rel=1e-6)
    assert tense._tension_scale * area0 == pytest.approx(0.5 * l_plain, rel=1e-6)

    def radius(fitter):
        v = fitter.run().mesh.verts
        return float(np.linalg.norm(v - 7.0, axis=1).max())

    # a strong tension makes the fitted cells smaller than the data alone (radius 3)
    r_plain = radius(_two_half_balls_fitter(iterations=30))
    r_tense = radius(_two_half_balls_fitter(iterations=30, tension=5.0))
    assert r_tense < r_plain - 0.05
    # a mesh without shared membranes (cells that do not touch yet) gets no tension
    assert _tiny_fitter(tension=5.0).step().loss == pytest.approx(_tiny_fitter().step().loss, rel=1e-9)
    with pytest.raises(ValueError, match="tension"):
        FitConfig(tension=-1.0)


def test_reshare_joins_a_new_contact_and_keeps_the_current_surfaces():
    from deltamic_core.fit import Fitter
    from deltamic_core.geometry import cell_surface, contacts, icosphere, merge_meshes, meshes_from_labels
    from deltamic_core.psf import GaussianPSF

    # cells 1 and 2 already share a membrane; cell 3 (a separate sphere) now overlaps cell 2
    spacing = (0.5, 0.5, 0.5)
    lab = np.zeros((20, 20, 36), np.int32)
    lab[5:15, 5:15, 4:12] = 1
    lab[5:15, 5:15, 12:20] = 2
    pair = meshes_from_labels(lab, spacing, 1.0, shared=True)
    sphere = icosphere((5.0, 5.0, 12.2), 2.5, 3)  # cell 2 ends at x = 9.75 um, the sphere starts at 9.7
    mesh = merge_meshes([pair, sphere])
    assert [tuple(p) for p in zip(contacts(mesh)["cell_a"], contacts(mesh)["cell_b"])] == [(1, 2)]
    img = np.random.default_rng(0).random(lab.shape)
    fitter = Fitter(img, spacing, mesh, GaussianPSF(sigma_um=1.0), FitConfig(levels=(1,), iterations=1))
    out = fitter._share_membranes(mesh, again="new")
    got = contacts(out)
    assert {(int(a), int(b)) for a, b in zip(got["cell_a"], got["cell_b"])} == {(1, 2), (2, 3)}
    # the free part of the sphere is back on the sphere (the rebuild alone is voxel-accurate)
    free3 = np.unique(out.faces[((out.labels == 0) & (out.labels.max(axis=1, keepdims=True) == 3)).any(axis=1)])
    free3 = np.setdiff1d(free3, np.unique(out.faces[(out.labels > 0).all(axis=1)]))
    r = np.linalg.norm(out.verts[free3] - [5.0, 5.0, 12.2], axis=1)
    assert np.abs(r - 2.5).max() < 0.05
    # nothing new to join: no rebuild (and without `again`, a mesh with shared faces stays)
    assert fitter._share_membranes(out, again="new") is None
    assert fitter._share_membranes(out, again="always") is not None
    assert fitter._share_membranes(mesh) is None
    assert cell_surface(out, 3).faces.size > 0


def test_a_level_holds_the_mesh_the_coarser_level_held():
    """A mesh reaching beyond the full-resolution box (which the coarse level's wider box held)
    is fitted on: the level's renderer gets the margin (before: the first render raised)."""
    from scipy import ndimage

    from deltamic_core.fit import FitConfig, Fitter
    from deltamic_core.geometry import icosphere
    from deltamic_core.psf import GaussianPSF
    from deltamic_core.render import Renderer

    sp, shape, psf = (0.25, 0.25, 0.25), (24, 24, 24), GaussianPSF((0.25, 0.25, 0.25))
    mesh = icosphere((2.9, 2.9, 6.0), 1.2, 2)
    hi = Renderer(shape, sp, psf).box.wrap_free_bounds()[1]
    assert mesh.verts[:, 2].max() > hi[2]  # beyond what the full-resolution box holds
    ax = np.arange(24) * 0.25
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    ball = ((zz - 2.9) ** 2 + (yy - 2.9) ** 2 + (xx - 5.4) ** 2 <= 1.2**2).astype(float)
    img = (100 * ndimage.gaussian_filter(ball, 1.0) + 10).astype(np.float32)
    cfg = FitConfig(levels=(4, 1), iterations=(0, 2), membrane_weight=0.0, volume_weight=1.0)
    fitter = Fitter(img, sp, mesh, psf, cfg)
    fitter.run(None)
    out = fitter.result()
    assert out.iterations == 2 and np.isfinite(out.mesh.verts).all()
