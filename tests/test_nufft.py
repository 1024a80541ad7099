"""The approximate NUFFT backend against exact quadrature facts and the exact backends."""

from math import factorial

import numpy as np
import pytest
import torch

pytest.importorskip("finufft")

from deltamic_core.grid import FFTGrid, GridBand
from deltamic_core.meshft import available_backends, mesh_ft
from deltamic_core.meshft.nufft_backend import (
    _THETA_MAX,
    _TOLS,
    NufftBackend,
    _subdivided_rule,
    rule_for_spans,
    rule_order,
    triangle_rule,
)

EXACT = "cpu" if "cpu" in available_backends() else "torch"


def _monomial_integral(a, b):
    """Mean of u^a v^b over the reference triangle {u, v >= 0, u + v <= 1} (area 1/2)."""
    return 2.0 * factorial(a) * factorial(b) / factorial(a + b + 2)


@pytest.mark.parametrize("n,s", [(1, 1), (3, 1), (6, 1), (4, 3), (2, 5)])
def test_rules_integrate_polynomials_exactly_up_to_degree_2n_minus_1(n, s):
    lam, w = _subdivided_rule(n, s) if s > 1 else triangle_rule(n)
    assert w.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.all(lam >= -1e-14) and np.allclose(lam.sum(1), 1.0)
    u, v = lam[:, 1], lam[:, 2]
    for a in range(2 * n):
        for b in range(2 * n - a):
            assert np.sum(w * u**a * v**b) == pytest.approx(_monomial_integral(a, b), rel=1e-11, abs=1e-15)


def test_rule_order_is_monotone_and_matches_table():
    theta = np.array([0.0, 1.0, 5.0, 20.0, 45.0, 200.0])
    for tol in (1e-3, 1e-6, 1e-9):
        n = rule_order(theta, tol)
        assert np.all(np.diff(n) >= 0)
        assert n[-1] == _THETA_MAX.shape[1] + 1  # beyond the largest rule: subdivide
    assert np.all(rule_order(theta, 1e-9) >= rule_order(theta, 1e-3))


@pytest.mark.parametrize("tol", [0.5, 0.1, 0.02, 1e-3, 1e-6, 1e-10])
def test_rule_table_is_conservative_on_fresh_triangles(tol):
    """Re-check the measured table on triangles it was not calibrated on."""
    rng = np.random.default_rng(12345)
    row = int(np.searchsorted(-_TOLS, -tol))
    big_lam, big_w = triangle_rule(60)
    worst = 0.0
    for _ in range(25):
        p = rng.normal(size=(3, 3)) * rng.uniform(0.2, 3.0)
        diam = max(np.linalg.norm(p[i] - p[j]) for i, j in [(0, 1), (1, 2), (0, 2)])
        for n in (3, 8, 14):
            theta = _THETA_MAX[row, n - 1]
            if theta <= 0:
                continue
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            k = d * theta / (2 * np.pi * diam)  # |k.(x - y)| * 2 pi <= theta on the triangle
            lam, w = triangle_rule(n)
            exact = np.sum(big_w * np.exp(-2j * np.pi * (big_lam @ p) @ k))
            approx = np.sum(w * np.exp(-2j * np.pi * (lam @ p) @ k))
            worst = max(worst, abs(approx - exact))
    assert worst <= tol


@pytest.mark.parametrize("tol", [1e-2, 1e-6])
def test_fewest_point_rule_meets_every_requirement_on_long_triangles(tol):
    """rule_for_spans: spans beyond the largest rule get split into s x s pieces whose order
    resolves theta / s (not the largest order on every piece): the error against a 60 x 60
    rule on each piece stays below tol at phase spans up to theta, and the points are the
    fewest over every (order, split) the table allows."""
    rng = np.random.default_rng(7)
    theta = np.array([10.0, 59.0, 61.0, 75.0, 110.0, 160.0])
    row = int(np.searchsorted(-_TOLS, -tol))
    order, sub = rule_for_spans([(theta, tol), (0.5 * theta, tol * 1e-2)])
    assert np.all(order <= _THETA_MAX.shape[1])
    for th, n, s in zip(theta, order, sub):
        for req, t in ((th, tol), (0.5 * th, tol * 1e-2)):
            assert rule_order(np.array([req / s]), t)[0] <= n
        # no (order, split) with fewer points resolves both requirements
        for s2 in range(1, 40):
            n2 = max(rule_order(np.array([th / s2]), tol)[0], rule_order(np.array([0.5 * th / s2]), tol * 1e-2)[0])
            if n2 <= _THETA_MAX.shape[1]:
                assert n * n * s * s <= n2 * n2 * s2 * s2
    # the accuracy the table promises, on fresh triangles: phase span exactly theta over the diameter
    big_lam, big_w = _subdivided_rule(60, 4)
    for th, n, s in zip(theta, order, sub):
        lam, w = _subdivided_rule(int(n), int(s))
        for _ in range(4):
            p = rng.normal(size=(3, 3))
            diam = max(np.linalg.norm(p[i] - p[j]) for i, j in [(0, 1), (1, 2), (0, 2)])
            d = rng.normal(size=3)
            k = d / np.linalg.norm(d) * th / (2 * np.pi * diam)
            exact = np.sum(big_w * np.exp(-2j * np.pi * (big_lam @ p) @ k))
            approx = np.sum(w * np.exp(-2j * np.pi * (lam @ p) @ k))
            assert abs(approx - exact) <= tol
    # the old choice (largest order, then split) used 30^2 x 4 points at theta 61-75 rad
    assert order[2] ** 2 * sub[2] ** 2 < 30**2 * 4 / 2
    assert _THETA_MAX[row, -1] < 61


def _sphere_case(dtype, radius=4.0, level=3, sigma=(1.0, 0.6, 0.6)):
    import trimesh

    ico = trimesh.creation.icosphere(level, radius=radius)
    verts = torch.tensor(ico.vertices[:, ::-1].copy(), dtype=dtype) + torch.tensor([8.0, 8.3, 7.9], dtype=dtype)
    faces = torch.tensor(ico.faces, dtype=torch.int64)
    weights = torch.rand(len(faces), dtype=dtype, generator=torch.Generator().manual_seed(0)) + 0.5
    grid = FFTGrid((32, 32, 32), (0.5, 0.5, 0.5))
    fz, fy, fx = grid.freq_grid()
    otf = torch.exp(-2 * np.pi**2 * (sigma[0] ** 2 * fz**2 + sigma[1] ** 2 * fy**2 + sigma[2] ** 2 * fx**2))
    band = GridBand.from_mask(grid, otf > 1e-3)
    return verts, faces, weights, band


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-4), (torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_forward_matches_exact_backend_within_tolerance(dtype, tol):
    verts, faces, weights, band = _sphere_case(dtype)
    exact = mesh_ft(verts.double(), faces, band.freqs(torch.float64), weights.double(), backend=EXACT)
    approx = NufftBackend(tol).forward(verts, faces, weights, band)
    assert approx.dtype == (torch.complex128 if dtype == torch.float64 else torch.complex64)
    err = (approx.to(torch.complex128) - exact).abs().max() / exact.abs()[0]
    assert err <= tol
    # and it is not trivially exact: a loose tolerance really is cheaper and less accurate
    if tol >= 1e-4 and dtype == torch.float64:
        assert err > 1e-12


@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_backward_matches_exact_backward(tol):
    verts, faces, weights, band = _sphere_case(torch.float64)
    k = band.freqs(torch.float64)
    g = torch.randn(len(k), dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    v = verts.clone().requires_grad_(True)
    w = weights.clone().requires_grad_(True)
    gv_ref, gw_ref = torch.autograd.grad(mesh_ft(v, faces, k, w, backend=EXACT), (v, w), g)
    gv, gw = NufftBackend(tol).backward(verts, faces, weights, band, g)
    assert ((gv - gv_ref).norm() / gv_ref.norm()) <= 10 * tol
    assert ((gw - gw_ref).norm() / gw_ref.norm()) <= 10 * tol


def test_mesh_ft_autograd_uses_the_analytic_nufft_backward(monkeypatch):
    from deltamic_core.meshft import get_backend

    monkeypatch.setattr(get_backend("nufft"), "tol", 1e-6)
    verts, faces, weights, band = _sphere_case(torch.float64, radius=2.0, level=2)
    k = band.freqs(torch.float64)
    g = torch.randn(len(k), dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    grads = []
    for backend, freqs in ((EXACT, k), ("nufft", band)):
        v = verts.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        loss = (mesh_ft(v, faces, freqs, w, backend=backend) * g.conj()).real.sum()
        grads.append(torch.autograd.grad(loss, (v, w)))
    (gv_ref, gw_ref), (gv, gw) = grads
    assert ((gv - gv_ref).norm() / gv_ref.norm()) <= 1e-5  # tol 1e-6
    assert ((gw - gw_ref).norm() / gw_ref.norm()) <= 1e-5


def test_huge_triangles_get_subdivided_and_stay_accurate():
    # two triangles of 12 um edges: phase spans far beyond the largest rule at |k| ~ 1 cycle/um
    verts = torch.tensor([[1.0, 1.0, 1.0], [1.5, 13.0, 2.0], [2.0, 3.0, 14.0], [12.0, 2.0, 2.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    weights = torch.ones(2, dtype=torch.float64)
    grid = FFTGrid((32, 32, 32), (0.5, 0.5, 0.5))
    fz, fy, fx = grid.freq_grid()
    band = GridBand.from_mask(grid, (fz**2 + fy**2 + fx**2) < 1.0)
    exact = mesh_ft(verts, faces, band.freqs(), weights, backend=EXACT)
    be = NufftBackend(1e-6)
    approx = be.forward(verts, faces, weights, band)
    assert (approx - exact).abs().max() / exact.abs()[0] <= 1e-6
    assert be.last_n_points > 2 * _THETA_MAX.shape[1] ** 2  # really subdivided


def test_degenerate_triangles_are_finite_with_zero_gradient():
    verts, faces, weights, band = _sphere_case(torch.float64, radius=2.0, level=1)
    extra = torch.tensor([[3.0, 3.0, 3.0], [4.0, 4.0, 4.0], [5.0, 5.0, 5.0]], dtype=torch.float64)  # collinear
    verts2 = torch.cat([verts, extra])
    n = len(verts)
    faces2 = torch.cat([faces, torch.tensor([[n, n + 1, n + 2], [n, n, n + 1]])])
    weights2 = torch.cat([weights, torch.ones(2, dtype=torch.float64)])
    be = NufftBackend(1e-6)
    U = be.forward(verts2, faces2, weights2, band)
    U_ref = be.forward(verts, faces, weights, band)
    assert torch.isfinite(U.real).all() and torch.allclose(U, U_ref, atol=1e-12)
    g = torch.randn(len(band), dtype=torch.complex128)
    gv, gw = be.backward(verts2, faces2, weights2, band, g)
    assert torch.isfinite(gv).all() and torch.isfinite(gw).all()
    assert torch.all(gv[n:] == 0) and torch.all(gw[-2:] == 0)


def test_bad_tolerance_and_missing_band_are_clear_errors():
    with pytest.raises(ValueError, match="tol"):
        NufftBackend(0.0)
    verts, faces, weights, band = _sphere_case(torch.float64, radius=2.0, level=1)
    with pytest.raises(ValueError, match="GridBand|band"):
        mesh_ft(verts, faces, band.freqs(), weights, backend="nufft")


def test_renderer_auto_switches_to_nufft_above_the_size_threshold(monkeypatch):
    from deltamic_core.psf import GaussianPSF
    from deltamic_core.render import Renderer

    verts, faces, weights, _ = _sphere_case(torch.float64, radius=3.0, level=2)
    psf = GaussianPSF(sigma_um=(0.8, 0.4, 0.4)).requires_grad_(False)
    shape, spacing = (32, 32, 32), 0.5
    # the Fourier route's backend choice ("auto" would take the real-space route for this PSF)
    kw = dict(route="fourier", dtype=torch.float64)
    exact = Renderer(shape, spacing, psf, backend=EXACT, **kw).render(verts, faces, weights)
    auto = Renderer(shape, spacing, psf, backend="auto", **kw)
    monkeypatch.setenv("DELTAMIC_NUFFT_MIN_PAIRS", "1e12")
    auto.render(verts, faces, weights)
    assert auto.backend_name in ("cpu", "torch")
    monkeypatch.setenv("DELTAMIC_NUFFT_MIN_PAIRS", "1")
    img = auto.render(verts, faces, weights)
    assert auto.backend_name == "nufft"
    assert float((img - exact).norm() / exact.norm()) < 1e-5


def test_points_follow_the_vertices_and_are_shared_across_weights():
    """The quadrature geometry is cached without the weights: transforms of the same mesh with
    other weights reuse it (one build), and vertices changed in place (same tensor, same
    address, no version bump: a numpy view) get new points, checked against the exact backend."""
    verts, faces, weights, band = _sphere_case(torch.float64, radius=2.0, level=2)
    k = band.freqs(torch.float64)
    be = NufftBackend(1e-7)
    g = torch.randn(len(k), dtype=torch.complex128, generator=torch.Generator().manual_seed(3))

    def check(w):
        U = be.forward(verts, faces, w, band)
        ref = mesh_ft(verts.clone(), faces, k, w, backend=EXACT)
        assert (U - ref).abs().max() / ref.abs()[0] <= 1e-6
        v = verts.clone().requires_grad_(True)
        wr = w.clone().requires_grad_(True)
        gv_ref, gw_ref = torch.autograd.grad(mesh_ft(v, faces, k, wr, backend=EXACT), (v, wr), g)
        gv, gw = be.backward(verts, faces, w, band, g)
        assert ((gv - gv_ref).norm() / gv_ref.norm()) <= 1e-5
        assert ((gw - gw_ref).norm() / gw_ref.norm()) <= 1e-5

    check(weights)
    check(2.0 - weights)  # other weights, same geometry
    assert be.n_geometry_builds == 1 and be.n_geometry_hits == 3
    ptr, version = verts.data_ptr(), verts._version
    verts.numpy()[:, 0] *= 1.2  # moved in place behind autograd's back
    verts.numpy()[:5] += 0.3
    assert verts.data_ptr() == ptr and verts._version == version
    check(weights)
    assert be.n_geometry_builds == 2


def test_renderer_volume_term_builds_the_points_once_per_step():
    """A membrane + volume render on the nufft backend is 4 transforms and their backwards;
    the quadrature geometry is built once for all 8 and the vertex gradient equals the exact
    backend's."""
    from deltamic_core.meshft import get_backend
    from deltamic_core.psf import GaussianPSF
    from deltamic_core.render import Renderer

    verts, faces, weights, _ = _sphere_case(torch.float64, radius=3.0, level=2)
    psf = GaussianPSF(sigma_um=(0.8, 0.4, 0.4)).requires_grad_(False)
    grads = {}
    for backend in (EXACT, "nufft"):
        r = Renderer((32, 32, 32), 0.5, psf, backend=backend, route="fourier", dtype=torch.float64)
        v = verts.clone().requires_grad_(True)
        nu = get_backend("nufft")
        builds, hits = nu.n_geometry_builds, nu.n_geometry_hits
        img = r.render(v, faces, weights, volume_weight=0.7)
        (grads[backend],) = torch.autograd.grad((img * img).sum(), v)
        if backend == "nufft":
            assert r.backend_name == "nufft"
            assert (nu.n_geometry_builds - builds, nu.n_geometry_hits - hits) == (1, 7)
    err = (grads["nufft"] - grads[EXACT]).norm() / grads[EXACT].norm()
    assert err < 1e-3
