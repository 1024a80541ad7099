"""The low-rank separable table kernel of the real-space route (a sampled PSF, MeasuredPSF):
its decomposition's error bound, the native splat against the pure-torch splat of the same
kernel (float64), against the dense trilinear table of the exact PSF and the Fourier route,
and finite-difference vertex gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltamic_core.psf import MeasuredPSF
from deltamic_core.render import Renderer
from splat_helpers import NATIVE_CASES, assert_portable_clone_agrees, splat_with_grads
from splat_helpers import rel_max as _rel_max
from splat_helpers import sphere as _sphere


def _native():
    from deltamic_core.render import realspace

    mod = realspace.native_module("cpu")
    if mod is None or not hasattr(mod, "splat_table_forward"):
        pytest.skip("native kernel not available")
    return mod


def _two_gaussians(n0=(24, 40, 40), s0=(0.1, 0.04, 0.04)):
    """A core and a halo of other proportions (centred samples): exactly rank 2, not rank 1."""
    ax = [(np.arange(n) - n // 2) * s for n, s in zip(n0, s0)]
    Z, Y, X = np.meshgrid(*ax, indexing="ij")
    core = np.exp(-0.5 * ((Z / 0.3) ** 2 + (Y / 0.1) ** 2 + (X / 0.1) ** 2))
    halo = 0.15 * np.exp(-0.5 * ((Z / 0.25) ** 2 + (Y / 0.3) ** 2 + (X / 0.3) ** 2))
    return core + halo, s0


def _confocal():
    pm = pytest.importorskip("psfmodels")
    s0 = (0.1, 0.04, 0.04)
    z = (np.arange(40) - 20) * s0[0]
    h = pm.confocal_psf(
        z, nx=57, dxy=s0[1], ex_wvl=0.488, em_wvl=0.525, pinhole_au=1.0, NA=1.1, ni0=1.33, ni=1.33, ns=1.33
    )
    h = np.clip(np.asarray(h)[:, :56, :56], 0, None)
    h[h < 1e-4 * h.max()] = 0
    return h, s0


# image errors (relative to the image's maximum) of the low-rank kernel at the default real_tol
# (decomposition bound 1e-3 of the PSF's peak, each term cut where it falls below 3e-4 of it),
# measured on the confocal PSF: 3.6e-3 vs the Fourier route (1.3e-3 with the cut at 3e-5: the
# cut dominates), 2.9e-3 vs the dense trilinear table (whose own error vs Fourier is 2.9e-3)
ERR_FOURIER = 6e-3
ERR_DENSE = 5e-3


def _cp(terms):
    return np.einsum("ra,rb,rc->abc", *terms.factors)


# ---------------------------------------------------------------------------------------
# the decomposition: the error it reports is the error it has, and it meets its bound
# ---------------------------------------------------------------------------------------
def test_decomposition_of_a_separable_sum_finds_its_rank_and_reports_its_error():
    from deltamic_core.render.lowrank import separable_decomposition

    h, s0 = _two_gaussians()
    one = separable_decomposition(h, s0, tol=1e-6, trunc=0.0, max_rank=1)
    assert one is None  # rank 1 cannot: the halo has other proportions
    terms = separable_decomposition(h, s0, tol=1e-6, trunc=0.0, max_rank=4)
    # the greedy SVD terms: rank 3 here (the ALS sweeps reach ~1e-5 at rank 2, not 1e-6)
    assert terms is not None and terms.rank in (2, 3)
    err = float(np.abs(_cp(terms) - h).max() / h.max())
    assert err <= 1e-6 and abs(err - terms.max_error) <= 1e-12


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_decomposition_of_a_confocal_psf_meets_its_bound(tol):
    from deltamic_core.render.lowrank import separable_decomposition

    h, s0 = _confocal()
    terms = separable_decomposition(h, s0, tol=tol, trunc=3e-4)
    assert terms is not None
    # independent check on every sample (the cropped-away ones count as approximated by 0)
    full = np.zeros_like(h)
    sl = tuple(
        slice(int(np.searchsorted((np.arange(n) - n // 2) * s, c[0] - 1e-9)), None)
        for n, s, c in zip(h.shape, s0, terms.coords)
    )
    sl = tuple(slice(a.start, a.start + len(c)) for a, c in zip(sl, terms.coords))
    full[sl] = _cp(terms)
    err = float(np.abs(full - h).max() / h.max())
    assert err <= tol and abs(err - terms.max_error) <= 1e-9 * max(1.0, err / tol)
    assert 1 < terms.rank <= (6 if tol >= 1e-2 else 12), terms.rank  # measured: 3-4 and 8-9


def test_table_kernel_reports_and_enforces_its_error_bound():
    from deltamic_core.render import route

    h, s0 = _confocal()
    psf = MeasuredPSF(np.fft.ifftshift(h), s0)
    k = route.lowrank_kernel(psf, (0.5, 0.25, 0.25), trunc=3e-4, tol=1e-3)
    assert k is not None and k.max_error <= 1e-3 and k.table_error < 1e-5
    # the continuous kernel (tables) at the samples vs the samples (normalised), independently
    h = np.fft.fftshift(psf.samples.numpy())
    c = [(np.arange(n) - n // 2) * s for n, s in zip(h.shape, s0)]
    vals = [np.stack([k.factor(a, r, torch.tensor(c[a]))[0].numpy() for r in range(k.rank)]) for a in range(3)]
    val = np.einsum("ra,rb,rc->abc", *vals)
    assert float(np.abs(val - h).max() / h.max()) <= 1e-3 + 1e-5
    # a bound no rank <= the maximum meets: no kernel (the route falls back to the dense table)
    assert route.lowrank_kernel(psf, (0.5, 0.25, 0.25), trunc=3e-4, tol=1e-7) is None


# ---------------------------------------------------------------------------------------
# the native splat == the pure-torch splat of the same kernel
# ---------------------------------------------------------------------------------------
def _lowrank_splat(case, dtype, native):
    from deltamic_core.render import realspace

    def low_rank(r):
        assert isinstance(r._real.kernel, realspace.LowRankTableKernel) and r._real.kernel.rank in (2, 3)

    h, s0 = _two_gaussians()
    return splat_with_grads(case, dtype, native, MeasuredPSF(np.fft.ifftshift(h), s0), check=low_rank)


@pytest.mark.parametrize("case", sorted(NATIVE_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_lowrank_splat_matches_the_torch_splat_of_its_terms(dtype, case):
    _native()
    native = _lowrank_splat(case, dtype, True)
    ref = _lowrank_splat(case, dtype, False)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for a, b in zip(native, ref):
        assert _rel_max(a, b) < tol
    assert float(native[0].abs().max()) > 0


def test_native_lowrank_splat_portable_clone_agrees(tmp_path):
    _native()
    assert_portable_clone_agrees("test_render_lowrank", "_lowrank_splat", tmp_path)


# ---------------------------------------------------------------------------------------
# against independent images: the dense table of the exact PSF, the Fourier route
# ---------------------------------------------------------------------------------------
def test_lowrank_kernel_matches_the_fourier_route_on_a_well_sampled_confocal_psf():
    from deltamic_core.render import realspace

    _native()
    h, s0 = _confocal()
    psf = MeasuredPSF(np.fft.ifftshift(h), s0)
    v, f = _sphere(1.0, 2, center=(0.1, -0.05, 0.08))
    # well sampled: the Fourier route needs no alias folding
    shape, sp, org = (12, 40, 40), (0.25, 0.07, 0.07), (-1.4, -1.37, -1.37)
    kw = dict(origin_um=org, dtype=torch.float64)
    real = Renderer(shape, sp, psf, route="real", **kw)
    assert isinstance(real._real.kernel, realspace.LowRankTableKernel)
    four = Renderer(shape, sp, psf, route="fourier", **kw)
    assert four.oversampling == (1, 1, 1)
    err = _rel_max(real.render(v, f), four.render(v, f))
    assert err < ERR_FOURIER, err


def test_lowrank_kernel_matches_the_dense_table_of_the_exact_psf():
    """Against the pure-torch trilinear (polyphase) table of the exact sinc-interpolated PSF,
    on the same quadrature points (the route without the native kernel builds that one)."""
    from deltamic_core.render import realspace

    _native()
    h, s0 = _confocal()
    psf = MeasuredPSF(np.fft.ifftshift(h), s0)
    v, f = _sphere(1.2, 2, center=(0.1, -0.05, 0.08))
    shape, sp, org = (12, 20, 20), (0.5, 0.25, 0.25), (-2.6, -2.3, -2.3)
    kw = dict(origin_um=org, dtype=torch.float64)
    low = Renderer(shape, sp, psf, route="real", **kw)
    assert isinstance(low._real.kernel, realspace.LowRankTableKernel)
    img = low.render(v, f)
    realspace.USE_NATIVE = False
    try:
        dense = Renderer(shape, sp, psf, route="real", **kw)
        ref = dense.render(v, f)
    finally:
        realspace.USE_NATIVE = True
    assert isinstance(dense._real.kernel, realspace.TableKernel)
    err = _rel_max(img, ref)
    assert err < ERR_DENSE, err


@pytest.fixture
def frozen_rules(monkeypatch):
    """The quadrature rule held fixed while finite differences move the vertices."""
    from deltamic_core.render import realspace

    original = realspace.SurfaceQuadrature.orders
    cache = {}

    def orders(self, tri):
        key = (id(self), tri.shape[0])
        if key not in cache:
            cache[key] = original(self, tri)
        return cache[key]

    monkeypatch.setattr(realspace.SurfaceQuadrature, "orders", orders)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_lowrank_route_vertex_gradients_match_finite_differences(native, frozen_rules):
    from deltamic_core.render import realspace

    _native()
    h, s0 = _two_gaussians()
    psf = MeasuredPSF(np.fft.ifftshift(h), s0)
    v, f = _sphere(1.2, 1, center=(0.1, -0.05, 0.08))
    r = Renderer((10, 14, 14), (0.5, 0.25, 0.25), psf, origin_um=(-2.2, -1.7, -1.6), route="real", dtype=torch.float64)
    assert isinstance(r._real.kernel, realspace.LowRankTableKernel)
    target = torch.rand(r.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w0 = torch.linspace(0.5, 1.5, len(f), dtype=torch.float64)
    old = realspace.USE_NATIVE
    realspace.USE_NATIVE = native
    try:
        x = v.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(((r.render(x, f, w0) - target) ** 2).sum(), x)
        gen = torch.Generator().manual_seed(0)
        eps = 1e-6
        for _ in range(6):
            d = torch.randn(v.shape, generator=gen, dtype=v.dtype)
            with torch.no_grad():
                lp = ((r.render(v + eps * d, f, w0) - target) ** 2).sum()
                lm = ((r.render(v - eps * d, f, w0) - target) ** 2).sum()
            fd = float(lp - lm) / (2 * eps)
            an = float((grad * d).sum())
            assert abs(an - fd) <= 1e-5 * max(1.0, abs(fd)), (an, fd)
    finally:
        realspace.USE_NATIVE = old


def test_auto_takes_the_lowrank_real_route_for_an_undersampled_confocal_psf():
    from deltamic_core.render import realspace

    _native()
    h, s0 = _confocal()
    psf = MeasuredPSF(np.fft.ifftshift(h), s0)
    r = Renderer((20, 40, 40), (0.5, 0.25, 0.25), psf)
    assert r.route == "real" and isinstance(r._real.kernel, realspace.LowRankTableKernel)
    assert r._real.fourier_oversampling != (1, 1, 1)


def test_a_fixed_confocal_model_takes_the_lowrank_route_and_images_as_its_fourier_route():
    # ConfocalPSF with fixed optics (no --learn-psf): its Nyquist-rate samples go through the
    # MeasuredPSF low-rank route (before: the Fourier route, folding aliases from a 2 x 4 x 4
    # oversampled band: 35-60 s per render + backward on a 71 x 163 x 121 image, 13 s now)
    from deltamic_core.psf import ConfocalPSF
    from deltamic_core.render import realspace

    _native()
    kw = dict(na=1.1, wavelength_um=0.525, ex_wavelength_um=0.488, n_immersion=1.33, n_immersion_design=1.33)
    psf = ConfocalPSF(**kw, n_sample=1.33, learn=())
    v, f = _sphere(1.2, 2, center=(0.1, -0.05, 0.08))
    shape, sp, org = (12, 20, 20), (0.5, 0.25, 0.25), (-2.6, -2.3, -2.3)
    auto = Renderer(shape, sp, psf, origin_um=org, dtype=torch.float64)
    assert auto.route == "real" and isinstance(auto._real.kernel, realspace.LowRankTableKernel)
    four = Renderer(shape, sp, psf, origin_um=org, dtype=torch.float64, route="fourier")
    assert four.oversampling != (1, 1, 1)
    a, b = auto.render(v, f), four.render(v, f)
    # both integrate to 1, but the samples' kernel ends where its terms fall below 3e-4 of the
    # peak (+-2.4 / +-1.2 um at most) and the Fourier route's PSF spreads over its whole padded
    # box: the real route's peak is 4.4% brighter. With the gain a fit solves for (least squares)
    # the images differ by 7.5e-3 of the peak
    gain = float((a * b).sum() / (a * a).sum())
    assert 0.9 < gain < 1.0
    err = _rel_max(gain * a, b)
    assert err < 1e-2, err
    # learnt optics keep the Fourier route (the samples would not follow the parameters)
    learnt = ConfocalPSF(**kw, n_sample=1.33)
    assert Renderer(shape, sp, learnt, origin_um=org).route == "fourier"
