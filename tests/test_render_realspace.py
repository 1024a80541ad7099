"""The renderer's real-space route (quadrature points splatted with the PSF) against the exact
Fourier route (float64), finite differences, and the route choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltamic_core.meshft import available_backends
from deltamic_core.psf import GaussianPSF, MeasuredPSF
from deltamic_core.render import Renderer
from splat_helpers import NATIVE_CASES, assert_portable_clone_agrees, splat_with_grads
from splat_helpers import rel_max as _rel_max
from splat_helpers import sphere as _sphere

# the exact transform (native kernel when built): the reference the real-space route must match
_EXACT = "cpu" if "cpu" in available_backends() else "torch"


def _pair(psf, shape, spacing, origin, *, real_tol, thr=1e-10, dtype=torch.float64):
    kw = dict(origin_um=origin, band_threshold=thr, dtype=dtype)
    real = Renderer(shape, spacing, psf, route="real", real_tol=real_tol, **kw)
    four = Renderer(shape, spacing, psf, route="fourier", backend=_EXACT, **kw)
    return real, four


# ---------------------------------------------------------------------------------------
# image: real route == Fourier route, to the quadrature tolerance
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sigma,spacing",
    [
        ((0.7, 0.45, 0.45), (0.5, 0.3, 0.3)),  # well sampled by the grid
        ((0.45, 0.12, 0.12), (0.5, 0.25, 0.25)),  # undersampled laterally (Fourier route folds aliases)
    ],
)
def test_real_route_matches_the_exact_fourier_route_and_converges_with_the_tolerance(sigma, spacing):
    v, f = _sphere(1.6, 1, center=(0.13, -0.21, 0.07))  # 80 faces of ~1.1 um: the rule matters
    w = torch.linspace(1.0, 2.0, len(f), dtype=torch.float64)
    shape, origin = (12, 18, 18), (-2.7, -2.3, -2.2)
    ref = Renderer(
        shape,
        spacing,
        GaussianPSF(sigma),
        origin_um=origin,
        band_threshold=1e-10,
        dtype=torch.float64,
        route="fourier",
        backend=_EXACT,
    ).render(v, f, w)
    errs = []
    for tol in (1e-2, 1e-4, 1e-7):
        real = Renderer(
            shape,
            spacing,
            GaussianPSF(sigma),
            origin_um=origin,
            band_threshold=1e-10,
            dtype=torch.float64,
            route="real",
            real_tol=tol,
        )
        assert real.route == "real"
        err = _rel_max(real.render(v, f, w), ref)
        # exact to the quadrature (relative to the image maximum): measured 1-19% of tol here
        # (80 faces of 1.1 um, the rule's tolerance QUADRATURE_TOL_PER_REAL_TOL x tol)
        assert err < 0.3 * tol, (tol, err)
        errs.append(err)
    assert errs[2] < errs[1] < errs[0], errs


def test_default_tolerance_float32_real_route_is_within_the_band_threshold_level():
    v, f = _sphere(1.6, 3, center=(0.02, 0.05, -0.04))
    psf = GaussianPSF((0.35, 0.1, 0.1))  # confocal-like, voxels 0.5 / 0.25 um
    real = Renderer((12, 18, 18), (0.5, 0.25, 0.25), psf, origin_um=(-2.7, -2.2, -2.2), dtype=torch.float32)
    assert real.route == "real"  # "auto" takes it: the grid undersamples this PSF
    ref = Renderer(
        (12, 18, 18),
        (0.5, 0.25, 0.25),
        psf,
        origin_um=(-2.7, -2.2, -2.2),
        dtype=torch.float64,
        band_threshold=1e-9,
        route="fourier",
        backend=_EXACT,
    ).render(v, f)
    err = _rel_max(real.render(v.float(), f), ref)
    assert err < 2e-3, err


def test_measured_psf_table_kernel_matches_the_fourier_route():
    # a Gaussian PSF given as samples: the MeasuredPSF model is their band-limited interpolant
    sig = (0.4, 0.15, 0.15)
    s0 = (0.1, 0.04, 0.04)
    n0 = (24, 32, 32)
    ax = [np.fft.fftfreq(n, d=1.0 / (n * s)) for n, s in zip(n0, s0)]
    Z, Y, X = np.meshgrid(*ax, indexing="ij")
    h = np.exp(-0.5 * ((Z / sig[0]) ** 2 + (Y / sig[1]) ** 2 + (X / sig[2]) ** 2))
    h[h < 1e-9] = 0.0
    psf = MeasuredPSF(h, s0)
    v, f = _sphere(1.4, 2, center=(0.1, -0.05, 0.08))
    real, four = _pair(psf, (12, 18, 18), (0.5, 0.25, 0.25), (-2.7, -2.2, -2.2), real_tol=1e-5, thr=1e-9)
    err = _rel_max(real.render(v, f), four.render(v, f))
    assert err < 3e-3, err  # trilinear table (step ~ sigma / 12): measured ~1e-3


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------
@pytest.fixture
def frozen_rules(monkeypatch):
    """Keep each mesh's quadrature rule fixed while finite differences move its vertices (the
    rule is chosen from the edge lengths: a piecewise-constant choice, zero derivative a.e.)."""
    from deltamic_core.render import realspace

    original = realspace.SurfaceQuadrature.orders
    cache = {}

    def orders(self, tri):
        key = (id(self), tri.shape[0])
        if key not in cache:
            cache[key] = original(self, tri)
        return cache[key]

    monkeypatch.setattr(realspace.SurfaceQuadrature, "orders", orders)


def _fd_check(fn, x, n_probe=6, eps=1e-6, seed=0, rtol=1e-5):
    g = torch.Generator().manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    val = fn(x)
    (grad,) = torch.autograd.grad(val, x)
    for _ in range(n_probe):
        d = torch.randn(x.shape, generator=g, dtype=x.dtype)
        with torch.no_grad():
            fd = (fn(x + eps * d) - fn(x - eps * d)) / (2 * eps)
        an = float((grad * d).sum())
        assert abs(an - float(fd)) <= rtol * max(1.0, abs(float(fd))), (an, float(fd))


def _fd_check_log_diag(psf, loss, eps=1e-6, rtol=1e-5):
    """The gradient of ``loss()`` w.r.t. a GaussianPSF's log-sigmas vs central differences."""
    psf.zero_grad()
    loss().backward()
    grad = psf.log_diag.grad.clone()
    for a in range(3):
        with torch.no_grad():
            psf.log_diag[a] += eps
            lp = float(loss())
            psf.log_diag[a] -= 2 * eps
            lm = float(loss())
            psf.log_diag[a] += eps
        fd = (lp - lm) / (2 * eps)
        assert abs(float(grad[a]) - fd) <= rtol * max(1.0, abs(fd)), (a, float(grad[a]), fd)


@pytest.mark.parametrize("kind", ["gaussian", "measured"])
def test_real_route_vertex_and_weight_gradients_match_finite_differences(kind, frozen_rules):
    if kind == "gaussian":
        psf = GaussianPSF((0.45, 0.12, 0.12)).requires_grad_(False)
    else:
        ax = [np.fft.fftfreq(n, d=1.0 / (n * s)) for n, s in zip((16, 24, 24), (0.1, 0.04, 0.04))]
        Z, Y, X = np.meshgrid(*ax, indexing="ij")
        psf = MeasuredPSF(np.exp(-0.5 * ((Z / 0.4) ** 2 + (Y / 0.15) ** 2 + (X / 0.15) ** 2)), (0.1, 0.04, 0.04))
    v, f = _sphere(1.2, 1, center=(0.1, -0.05, 0.08))
    r = Renderer(
        (10, 14, 14),
        (0.5, 0.25, 0.25),
        psf,
        origin_um=(-2.2, -1.7, -1.6),
        route="real",
        real_tol=1e-4,
        dtype=torch.float64,
    )
    target = torch.rand(r.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w0 = torch.linspace(0.5, 1.5, len(f), dtype=torch.float64)
    # the table kernel is trilinear between lattice nodes: a probe may cross a kink
    _fd_check(
        lambda x: ((r.render(x, f, w0) - target) ** 2).sum(),
        v,
        eps=1e-7 if kind == "measured" else 1e-6,
        rtol=1e-4 if kind == "measured" else 1e-5,
    )
    _fd_check(lambda w: ((r.render(v, f, w) - target) ** 2).sum(), w0)


def test_learnt_gaussian_sigma_gets_its_gradient_on_the_real_route(frozen_rules):
    psf = GaussianPSF((0.45, 0.12, 0.12))
    v, f = _sphere(1.2, 1, center=(0.1, -0.05, 0.08))
    r = Renderer((10, 14, 14), (0.5, 0.25, 0.25), psf, origin_um=(-2.2, -1.7, -1.6), real_tol=1e-5, dtype=torch.float64)
    assert r.route == "real"
    target = torch.rand(r.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss():
        return ((r.render(v, f) - target) ** 2).sum()

    _fd_check_log_diag(psf, loss)


# ---------------------------------------------------------------------------------------
# route choice and the Renderer API on the real route
# ---------------------------------------------------------------------------------------
def test_auto_route_follows_the_sampling_and_builds_the_band_only_when_asked():
    narrow = Renderer((12, 16, 16), (0.5, 0.25, 0.25), GaussianPSF((0.35, 0.09, 0.09)))
    wide = Renderer((12, 16, 16), (0.5, 0.25, 0.25), GaussianPSF((1.0, 0.6, 0.6)))
    assert narrow.route == "real" and wide.route == "fourier"
    v, f = _sphere(1.2, 1, center=(2.8, 2.0, 2.0), dtype=torch.float32)
    narrow.render(v, f)
    assert narrow._band is None  # the oversampled Fourier plan was never built
    assert narrow.backend_name == "realspace"
    # the Fourier attributes still exist on demand, and spectrum() still works
    assert narrow.oversampling[1] > 1 and len(narrow.band) > 0
    assert narrow.spectrum(v, f).shape == (len(narrow.band),)
    # a volume term is rendered through the Fourier route
    img = narrow.render(v, f, volume_weight=0.1)
    assert img.shape == (12, 16, 16) and bool(torch.isfinite(img).all())


def test_auto_route_with_the_native_splat_takes_well_sampled_gaussians_too(monkeypatch):
    """With the native Gaussian splat, "auto" compares the window with the oversampling the
    Fourier route would need (window <= 3000 x its product), also without oversampling; the
    pure-torch splat keeps the old rule (only undersampled PSFs, small windows)."""
    from deltamic_core.render import realspace

    if realspace.native_module("cpu") is None:
        pytest.skip("native kernel not available")
    sampled = ((0.8, 0.35, 0.35), (0.5, 0.25, 0.25))  # no oversampling needed, 1,872-voxel window
    r = Renderer((12, 16, 16), sampled[1], GaussianPSF(sampled[0]))
    assert r._real is not None and math.prod(r._real.fourier_oversampling) == 1
    assert r.route == "real" and math.prod(r._real.window) == 1872
    too_wide = Renderer((12, 16, 16), (0.5, 0.25, 0.25), GaussianPSF((1.2, 0.55, 0.55)))  # 6,480 voxels
    assert too_wide.route == "fourier"
    # a Fourier band asked for more accuracy than the real route's tolerance gives keeps the old rule
    strict = Renderer((12, 16, 16), sampled[1], GaussianPSF(sampled[0]), band_threshold=1e-8)
    assert strict.route == "fourier"
    monkeypatch.setattr(realspace, "USE_NATIVE", False)
    assert Renderer((12, 16, 16), sampled[1], GaussianPSF(sampled[0])).route == "fourier"
    assert Renderer((12, 16, 16), (0.5, 0.25, 0.25), GaussianPSF((0.35, 0.09, 0.09))).route == "real"


def test_real_route_is_refused_for_a_learnt_psf_it_cannot_differentiate():
    psf = GaussianPSF(covariance_um2=[[0.1, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.0, 0.01]])
    with pytest.raises(ValueError, match="route='real'"):
        Renderer((8, 8, 8), (0.5, 0.25, 0.25), psf, route="real")
    assert Renderer((8, 8, 8), (0.5, 0.25, 0.25), psf).route == "fourier"
    with pytest.raises(ValueError, match="route must be"):
        Renderer((8, 8, 8), (0.5, 0.25, 0.25), psf, route="splat")


def test_update_band_on_the_real_route_follows_a_changed_sigma():
    psf = GaussianPSF((0.45, 0.12, 0.12)).requires_grad_(False)
    v, f = _sphere(1.2, 1, center=(0.1, -0.05, 0.08))
    r = Renderer((10, 14, 14), (0.5, 0.25, 0.25), psf, origin_um=(-2.2, -1.7, -1.6), dtype=torch.float64)
    with torch.no_grad():
        psf.log_diag += math.log(1.3)
    r.update_band()
    fresh = Renderer(
        (10, 14, 14),
        (0.5, 0.25, 0.25),
        psf,
        origin_um=(-2.2, -1.7, -1.6),
        dtype=torch.float64,
        route="fourier",
        backend=_EXACT,
        band_threshold=1e-8,
    )
    assert _rel_max(r.render(v, f), fresh.render(v, f)) < 2e-3


# ---------------------------------------------------------------------------------------
# the native (C++) splat of whole triangles against the pure-torch splat of the points
# ---------------------------------------------------------------------------------------
def _native_and_torch_splat(case, dtype, native):
    psf = GaussianPSF((0.45, 0.12, 0.15))
    return (*splat_with_grads(case, dtype, native, psf), psf.log_diag.grad.clone())  # sigma's too


@pytest.mark.parametrize("case", sorted(NATIVE_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_triangle_splat_matches_the_torch_point_splat(dtype, case):
    from deltamic_core.render import realspace

    if realspace.native_module("cpu") is None:
        pytest.skip("native kernel not available")
    native = _native_and_torch_splat(case, dtype, True)
    ref = _native_and_torch_splat(case, dtype, False)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for a, b in zip(native, ref):
        assert _rel_max(a, b) < tol
    assert float(native[0].abs().max()) > 0


def test_native_splat_portable_clone_gives_the_same_image_and_gradients(tmp_path):
    """The splat's loops are compiled twice like meshft's (AVX2+FMA and baseline x86-64):
    DELTAMIC_MESHFT_ISA=baseline forces the portable one in a fresh process; both agree in
    float64 (image, vertex, weight and sigma gradients)."""
    from deltamic_core.render import realspace

    if realspace.native_module("cpu") is None:
        pytest.skip("native kernel not available")
    assert_portable_clone_agrees("test_render_realspace", "_native_and_torch_splat", tmp_path)


# ---------------------------------------------------------------------------------------
# coarse levels: the block-averaged Gaussian (BlockAveragedPSF) on the real-space route
# ---------------------------------------------------------------------------------------
def _coarse_and_fine(F, blur, native, sigma=(0.3, 0.1, 0.1), psf=None):
    """The coarse level's image on the real route, and its definition: the mean of F^3 fine
    voxels of the fine image (plain Gaussian of sigma sqrt(sigma^2 + blur^2)), whose voxel
    (i F + (F - 1) / 2) sits at the coarse voxel i's centre."""
    from deltamic_core.fit import block_average
    from deltamic_core.psf import BlockAveragedPSF
    from deltamic_core.render import realspace

    fine, shape = (0.5, 0.25, 0.25), (8, 12, 12)
    sp = tuple(F * s for s in fine)
    origin = tuple(-0.5 * (n - 1) * s + 0.013 for n, s in zip(shape, sp))
    fine_origin = tuple(o - 0.5 * (F - 1) * s for o, s in zip(origin, fine))
    v, f = _sphere(2.6, 2, center=(0.2, -0.15, 0.1))
    inner = psf if psf is not None else GaussianPSF(sigma).requires_grad_(False)
    old = realspace.USE_NATIVE
    realspace.USE_NATIVE = native
    try:
        level_psf = BlockAveragedPSF(inner, F, fine, blur_um=blur)
        r = Renderer(shape, sp, level_psf, origin_um=origin, route="real", dtype=torch.float64)
        if native and blur == 0:  # "auto" takes it: a narrow PSF on a coarse grid, the native splat
            assert Renderer(shape, sp, level_psf, origin_um=origin, dtype=torch.float64).route == "real"
            # also as the fitter builds its coarse levels (no alias folding on the Fourier route)
            unfolded = Renderer(shape, sp, level_psf, origin_um=origin, dtype=torch.float64, fold_aliases=False)
            assert unfolded.route == "real"
        coarse = r.render(v, f)
        wide = GaussianPSF(tuple(math.sqrt(s * s + blur * blur) for s in sigma))
        rf = Renderer(tuple(n * F for n in shape), fine, wide, origin_um=fine_origin, route="real", dtype=torch.float64)
        ref = block_average(rf.render(v, f).detach(), F)
    finally:
        realspace.USE_NATIVE = old
    return coarse, ref, (r, v, f)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("F,blur", [(2, 0.0), (3, 0.0), (2, 0.4)])
def test_coarse_level_real_route_is_the_block_average_of_the_fine_image(F, blur, native):
    from deltamic_core.render import realspace

    if native and realspace.native_module("cpu") is None:
        pytest.skip("native kernel not available")
    coarse, ref, _ = _coarse_and_fine(F, blur, native)
    assert float(ref.max()) > 0
    # exact up to rounding: the same points, the f^3 samples summed in the kernel instead
    assert _rel_max(coarse.detach(), ref) < 1e-12


def test_coarse_level_real_route_fails_a_shifted_block_centre():
    """The check above can fail: the fine image block-averaged from a grid shifted by half a
    fine voxel differs from the coarse real-route image by far more than its tolerance."""
    from deltamic_core.fit import block_average

    coarse, _, (r, v, f) = _coarse_and_fine(2, 0.0, False)
    # the right fine origin is the coarse one minus half a fine voxel; this one is half a voxel off
    rf = Renderer(
        tuple(2 * n for n in r.shape),
        (0.5, 0.25, 0.25),
        GaussianPSF((0.3, 0.1, 0.1)),
        origin_um=r.origin_um,
        route="real",
        dtype=torch.float64,
    )
    wrong = block_average(rf.render(v, f).detach(), 2)
    assert _rel_max(coarse.detach(), wrong) > 1e-2


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_coarse_level_real_route_gradients_match_finite_differences(native, frozen_rules):
    """Vertex gradients and the learnt inner sigma's through the block average and the blur."""
    from deltamic_core.render import realspace

    if native and realspace.native_module("cpu") is None:
        pytest.skip("native kernel not available")
    psf = GaussianPSF((0.3, 0.1, 0.1))
    _, _, (r, v, f) = _coarse_and_fine(2, 0.3, native, psf=psf)
    target = torch.rand(r.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    old = realspace.USE_NATIVE
    realspace.USE_NATIVE = native
    try:

        def loss(x=v):
            return ((r.render(x, f) - target) ** 2).sum()

        _fd_check(loss, v)
        _fd_check_log_diag(psf, loss)
    finally:
        realspace.USE_NATIVE = old
