"""Choice and set-up of the renderer's real-space route (see :mod:`.realspace`).

"auto" takes the real-space route when (1) the grid undersamples the PSF, i.e. the Fourier
route would have to fold aliases from an oversampled band (its cost grows with the square or
cube of the oversampling factor, the real-space cost does not), (2) the PSF's truncated window
is small compared with that oversampling (window voxels x reads per voxel <=
``MAX_WINDOW_PER_OVERSAMPLING`` x the product of the oversampling factors: a PSF wider than
the voxels is cheaper in Fourier space) and (3) a real-space kernel exists for the PSF: an axis-aligned Gaussian (learnable
sigma keeps its gradient), a full-covariance Gaussian or a :class:`MeasuredPSF` (fixed
parameters), or a coarse level's block-averaged axis-aligned Gaussian
(:class:`~deltamic_core.psf.BlockAveragedPSF` on a grid of its block's spacing; learnable
sigma too). Everything else stays on the Fourier route. Measured by
``benchmarks/bench_speed.py``.

With the native triangle splat (an axis-aligned Gaussian on the CPU with the kernel built) the
rule is window voxels <= ``NATIVE_WINDOW_PER_OVERSAMPLING`` x the oversampling product, also
without oversampling, unless the Fourier route was asked for more accuracy than the real route
gives (band_threshold < 1e-2 x real_tol: then the rule above). Measured (embryo, 1 thread, CPU time of forward + backward, real vs
nufft Fourier route) 0.17 vs 23 s at window 45 / oversampling 32, 0.25 vs 4.6 s at 288 / 8,
0.35 vs 1.55 s at 810 / 4, 0.21 vs 2.2 s at 540 / 4 (128^3), 0.45 vs 0.90 s at 1872 / 1,
0.48 vs 0.53 s at 3744 / 1 and 0.67 vs 0.45 s at 6480 / 1.

A :class:`MeasuredPSF` with the native kernel built gets the low-rank separable table kernel
(:class:`~.realspace.LowRankTableKernel`, decomposition in :mod:`.lowrank`, error bound
``LOWRANK_TOL_PER_REAL_TOL`` x real_tol of the peak); "auto" takes it when the Fourier route
would oversample and the terms' summed window <= ``LOWRANK_WINDOW_PER_OVERSAMPLING`` x the
oversampling product. Without a decomposition meeting the bound: the dense trilinear table.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import realspace
from .realspace import (
    BlockGaussianKernel,
    GaussianKernel,
    LowRankTableKernel,
    SurfaceQuadrature,
    TableKernel,
    _window_size,
    otf_weighted_rows,
    splat,
)

# "auto" takes the real-space route when window voxels x table reads <= this x the Fourier
# route's oversampling product
MAX_WINDOW_PER_OVERSAMPLING = 8
# the same with the native Gaussian splat (window voxels, no table reads; see the docstring)
NATIVE_WINDOW_PER_OVERSAMPLING = 3000
# a coarse level whose Fourier route drops the aliases instead of folding them (no oversampled
# grid: a NUFFT on the small coarse grid): the native splat's window must stay below this. Measured
# (3-cell tiny-agg3 fit, 1 thread, CPU s per step, real vs Fourier): window 600 (factor 4,
# 1 um blur) 0.063-0.070 vs 0.093; window 2601 (factor 2, 1 um blur) 0.142 vs 0.114-0.118
COARSE_NATIVE_WINDOW = 1200
# the native low-rank table splat (MeasuredPSF): effective window (voxels summed over the terms)
# <= this x the oversampling product
LOWRANK_WINDOW_PER_OVERSAMPLING = 3000
# its decomposition's error bound (max over the samples, relative to the peak) = this x real_tol,
# and the largest rank tried
LOWRANK_TOL_PER_REAL_TOL = 0.1
LOWRANK_MAX_RANK = 16
# the quadrature's per-frequency tolerance (see realspace.otf_weighted_rows) = this x real_tol
# (at most 0.5, the rule table's top row). Measured (bench_speed's 14k-face embryo at 128^3,
# 0.25 um voxels, float64, max image error relative to the image's maximum against the exact
# quadrature): Gaussian 0.45/0.16/0.16 um at factor 1 / 5 / 10: 19.8 / 11.2 / 8.9 points per
# face, error 3.2e-5 / 4.7e-4 / 3.4e-3; 0.3/0.09/0.09 um: 41.4 / 25.3 / 17.4 points, 6.3e-5 /
# 1.1e-3 / 3.1e-3. The kernel's truncation (3e-4 of the peak per axis) alone is 1.2e-3 there.
QUADRATURE_TOL_PER_REAL_TOL = 5.0
# table kernels: lattice step (fraction of the PSF's width per axis) and size cap (entries)
_TABLE_STEP = 1.0 / 12.0
_TABLE_MAX = 1 << 24


def _gaussian_kmax(inv_diag):
    """kmax_a(o) for an OTF exp(-2 pi^2 k^T S k): sqrt(ln(1/o) / (2 pi^2) (S^-1)_aa)."""

    def kmax(level):
        c = math.log(1.0 / level) / (2 * math.pi**2)
        return np.sqrt(c * np.asarray(inv_diag))

    return kmax


def _otf_kmax(otf_abs: np.ndarray, freqs):
    """kmax_a(o) from |OTF| sampled on an rfft grid (relative to its maximum)."""
    mag = otf_abs / otf_abs.max()
    fz, fy, fx = (np.abs(f) for f in freqs)

    def kmax(level):
        m = mag > level
        if not m.any():
            return None
        return np.array([fz[m.any((1, 2))].max(), fy[m.any((0, 2))].max(), fx[m.any((0, 1))].max()]) * 1.05

    return kmax


def _quadrature_rows(kmax, renderer):
    """The OTF-weighted rule rows of ``renderer``'s real-space quadrature."""
    tol = min(0.5, QUADRATURE_TOL_PER_REAL_TOL * renderer.real_tol)
    return otf_weighted_rows(kmax, tol, renderer.band_threshold)


class RealPlan:
    """Kernel + quadrature of the real-space route for one renderer."""

    def __init__(self, renderer, kernel, kmax, sigma_fn=None):
        self.r = renderer
        self.kernel = kernel
        self.kmax = kmax
        self.sigma_fn = sigma_fn
        self.quadrature = SurfaceQuadrature(_quadrature_rows(kmax, renderer))
        sp = renderer.spacing_um
        # estimated oversampling the Fourier route would need (first q with q / (2 s) >= kmax)
        k = kmax(renderer.band_threshold)
        self.fourier_oversampling = tuple(max(1, int(math.ceil(2 * s * ka - 1e-9))) for s, ka in zip(sp, k))
        unfolded = not renderer.fold_aliases  # the Fourier route would drop the aliases, not fold them
        if unfolded:
            self.fourier_oversampling = (1, 1, 1)
        sigma = None if sigma_fn is None else sigma_fn()
        self._rule_sigma = None if sigma is None else sigma.detach().cpu().numpy()
        self.window = _window_size(kernel.radius(sigma), sp)
        # measured cost model of the pure-torch splat (benchmarks/bench_speed.py, 2 cores): the
        # real-space cost per point is the window (times ~8 reads for a table kernel), the Fourier route's grows
        # with the oversampling product; the real route won where window x reads <= ~8 x that
        # product (narrow PSFs: 1.2-1.8x faster per iteration, plans 4-40x faster) and lost
        # above (a 540-voxel window at oversampling 4: 3x slower)
        reads = 1 if kernel.separable else 8
        q = math.prod(self.fourier_oversampling)
        # the real route's image error (quadrature ~5e-2 x real_tol, truncation ~1e-3 of its
        # maximum) is of the band threshold's level: where the Fourier
        # route was asked for better (a tiny band_threshold) only the old rule sends it there
        accurate = 1e-2 * renderer.real_tol <= renderer.band_threshold
        native = realspace.native_module(renderer.device) is not None
        if accurate and isinstance(kernel, GaussianKernel) and native:
            limit = COARSE_NATIVE_WINDOW if unfolded else NATIVE_WINDOW_PER_OVERSAMPLING * q
            self.preferred = math.prod(self.window) <= limit
        elif isinstance(kernel, LowRankTableKernel) and native:
            # the native low-rank splat costs ~ the Gaussian's per window voxel and term
            self.preferred = q > 1 and kernel.effective_window() <= LOWRANK_WINDOW_PER_OVERSAMPLING * q
        else:
            self.preferred = q > 1 and math.prod(self.window) * reads <= MAX_WINDOW_PER_OVERSAMPLING * q

    def _sigma(self):
        if self.sigma_fn is None:
            return None
        return self.sigma_fn().to(dtype=self.r.dtype, device=self.r.device)

    def refresh_rule(self) -> None:
        """Follow a learnt sigma: rebuild the quadrature's rows when sigma has changed."""
        if self.sigma_fn is None:
            return
        r = self.r
        with torch.no_grad():
            s = self.sigma_fn().detach().cpu().numpy()
        if not np.array_equal(s, self._rule_sigma):
            self._rule_sigma = s
            self.kmax = _gaussian_kmax(1.0 / s**2)
            self.quadrature.rows = SurfaceQuadrature(_quadrature_rows(self.kmax, r)).rows

    def render(self, verts, faces, weights):
        r = self.r
        if weights is None:
            weights = torch.ones(faces.shape[0], dtype=r.dtype, device=verts.device)
        v = verts.to(r.dtype)
        self.refresh_rule()
        if isinstance(self.kernel, LowRankTableKernel):
            mod = realspace.native_module(v.device)
            if mod is not None:
                img, self.last_n_points = realspace.splat_triangles_table(
                    mod, self.kernel, self.quadrature, r.shape, r.spacing_um, r.origin_um, v, faces, weights.to(r.dtype)
                )
                return img
            x, s = self.quadrature.points(v, faces, weights.to(r.dtype))
            self.last_n_points = int(x.shape[0])
            return realspace.splat_lowrank_torch(self.kernel, r.shape, r.spacing_um, r.origin_um, x, s)
        mod = realspace.native_module(v.device) if isinstance(self.kernel, GaussianKernel) else None
        if mod is not None:
            img, self.last_n_points = realspace.splat_triangles(
                mod,
                self.kernel,
                self.quadrature,
                r.shape,
                r.spacing_um,
                r.origin_um,
                v,
                faces,
                weights.to(r.dtype),
                self._sigma(),
            )
            return img
        x, s = self.quadrature.points(v, faces, weights.to(r.dtype))
        self.last_n_points = int(x.shape[0])
        return splat(self.kernel, r.shape, r.spacing_um, r.origin_um, x, s, self._sigma())

    def memory_estimate_bytes(self, n_faces: int, n_verts: int) -> float:
        b = torch.finfo(self.r.dtype).bits // 8
        vox = math.prod(n + 2 * w for n, w in zip(self.r.shape, self.window))
        chunk = (1 << 23) * (8 + 4 * b)  # flat indices + values of one chunk, forward or backward
        points = n_faces * 400 * 8 * b  # points, strengths and their autograd buffers (generous)
        return float(3 * vox * b + chunk + points + n_verts * 64)


def real_plan(renderer, *, required: bool):
    """The :class:`RealPlan` for ``renderer``'s PSF, or None when no real-space kernel exists
    (then a ValueError when ``required``)."""
    from ..psf import BlockAveragedPSF, ConfocalPSF, GaussianPSF, MeasuredPSF

    psf = renderer.psf
    dtype, device = renderer.dtype, renderer.device
    sp = renderer.spacing_um
    trunc = min(3e-4, 0.3 * renderer.band_threshold)
    learnable = any(p.requires_grad for p in psf.parameters()) if hasattr(psf, "parameters") else False
    if isinstance(psf, GaussianPSF) and not psf.is_full_covariance:
        kernel = GaussianKernel(psf, trunc=trunc)
        with torch.no_grad():
            s = psf.sigma_um.detach().cpu().numpy()
        return RealPlan(renderer, kernel, _gaussian_kmax(1.0 / s**2), sigma_fn=lambda: psf.sigma_um)
    if (
        isinstance(psf, BlockAveragedPSF)
        and isinstance(psf.inner, GaussianPSF)
        and not psf.inner.is_full_covariance
        and all(abs(a - b) <= 1e-9 * b for a, b in zip(sp, [psf.factor * s for s in psf.fine_spacing_um]))
    ):
        # a coarse level: the Gaussian (widened by the extra blur) averaged over the block's
        # fine samples, on the coarse grid (spacing factor x fine)
        inner, blur2 = psf.inner, psf.blur_um**2

        def sigma_fn():
            return torch.sqrt(inner.sigma_um**2 + blur2)

        kernel = BlockGaussianKernel(inner, psf.factor, psf.fine_spacing_um, trunc=trunc)
        with torch.no_grad():
            s = sigma_fn().detach().cpu().numpy()
        # the box's |transfer| <= 1: the widened Gaussian's band bounds the quadrature's needs
        return RealPlan(renderer, kernel, _gaussian_kmax(1.0 / s**2), sigma_fn=sigma_fn)
    if isinstance(psf, GaussianPSF) and not learnable:
        with torch.no_grad():
            S = psf.covariance_um2.detach().cpu().numpy()
        Si = np.linalg.inv(S)
        c = math.sqrt(2 * math.log(1 / trunc))
        radius = tuple(c * math.sqrt(S[a, a]) for a in range(3))
        norm = 1.0 / math.sqrt((2 * math.pi) ** 3 * np.linalg.det(S))

        def values(dz, dy, dx):
            Z, Y, X = np.meshgrid(dz, dy, dx, indexing="ij")
            d = np.stack([Z, Y, X], -1)
            return norm * np.exp(-0.5 * np.einsum("...a,ab,...b->...", d, Si, d))

        q = _table_q([math.sqrt(S[a, a]) for a in range(3)], radius, sp)
        kernel = TableKernel(values, radius, sp, q, dtype, device)
        return RealPlan(renderer, kernel, _gaussian_kmax(np.diag(Si)))
    if isinstance(psf, ConfocalPSF) and not learnable and realspace.native_module(device) is not None:
        # fixed optics: its samples at the Nyquist rate of its band are the continuous PSF (their
        # sinc interpolant), so the MeasuredPSF route below applies to them
        psf = nyquist_samples(psf)
    if isinstance(psf, MeasuredPSF) and realspace.native_module(device) is not None:
        kernel = lowrank_kernel(psf, sp, trunc=trunc, tol=LOWRANK_TOL_PER_REAL_TOL * renderer.real_tol)
        if kernel is not None:
            otf = psf.otf(psf.grid, dtype=torch.float64).abs().cpu().numpy()
            return RealPlan(renderer, kernel, _otf_kmax(otf, [f.numpy() for f in psf.grid.freqs()]))
    psf = renderer.psf
    if isinstance(psf, MeasuredPSF):
        h = psf.samples.detach().cpu().numpy()
        s0 = psf.spacing_um
        coords = [c.numpy() for c in psf.grid.centred_coords()]
        radius = psf.extent_um()
        w = h / h.sum()
        sig = []
        for a in range(3):
            c = coords[a].reshape([-1 if b == a else 1 for b in range(3)])
            mu = (w * c).sum()
            sig.append(max(math.sqrt(max(((w * (c - mu) ** 2).sum()), 0.0)), 0.5 * s0[a]))

        def values(dz, dy, dx):
            # band-limited (sinc) interpolant of the samples: the continuous PSF whose OTF is
            # MeasuredPSF.otf (the samples' DTFT inside their Nyquist band, 0 outside)
            kz, ky, kx = (np.sinc((d[:, None] - c[None, :]) / s) for d, c, s in zip((dz, dy, dx), coords, s0))
            out = np.einsum("abc,xc->abx", h, kx)
            out = np.einsum("abx,yb->ayx", out, ky)
            return np.einsum("ayx,za->zyx", out, kz)

        q = _table_q(sig, radius, sp)
        kernel = TableKernel(values, radius, sp, q, dtype, device)
        otf = psf.otf(psf.grid, dtype=torch.float64).abs().cpu().numpy()
        return RealPlan(renderer, kernel, _otf_kmax(otf, [f.numpy() for f in psf.grid.freqs()]))
    if required:
        kind = type(psf).__name__
        why = "its parameters are learnt" if learnable else "no real-space kernel exists for it"
        raise ValueError(f"route='real' is not available for a {kind} ({why}): use route='auto' or 'fourier'")
    return None


# a fixed-parameter model sampled for the low-rank route: the box is this x its extent_um (where
# it falls to 1e-3 of its peak; the decomposition crops at ``trunc`` of the peak) and the step
# this x the Nyquist step of its band
_SAMPLED_BOX = 1.5
_SAMPLED_STEP = 0.9


def nyquist_samples(psf):
    """A :class:`MeasuredPSF` of ``psf``'s point samples (``psf.psf``) on a grid finer than the
    Nyquist step of its band limits (``psf._band_limits()``: axial, lateral), over
    ``_SAMPLED_BOX`` x its extent: the samples' band-limited interpolant is the continuous PSF.
    Kept on the model (keyed by its parameter values) for the next renderer."""
    from ..grid import FFTGrid
    from ..psf import MeasuredPSF

    key = tuple(sorted(psf._values().items()))
    cached = getattr(psf, "_nyquist_samples", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    kz, kxy = psf._band_limits()
    step = tuple(_SAMPLED_STEP * 0.5 / k for k in (kz, kxy, kxy))
    shape = tuple(2 * int(math.ceil(_SAMPLED_BOX * e / s)) + 1 for e, s in zip(psf.extent_um(), step))
    with torch.no_grad():
        h = psf.psf(FFTGrid(shape, step), dtype=torch.float64).cpu().numpy()
    out = MeasuredPSF(np.clip(h, 0.0, None), step)
    psf._nyquist_samples = (key, out)
    return out


def lowrank_kernel(psf, spacing, *, trunc, tol):
    """The :class:`LowRankTableKernel` of a MeasuredPSF's samples (max error <= ``tol`` of the
    peak, decomposition and tables together), or None when no rank <= ``LOWRANK_MAX_RANK`` meets it."""
    from .lowrank import separable_decomposition

    h = np.fft.fftshift(psf.samples.detach().cpu().numpy().astype(np.float64))
    terms = separable_decomposition(h, psf.spacing_um, tol=0.9 * tol, trunc=trunc, max_rank=LOWRANK_MAX_RANK)
    if terms is None:
        return None
    kernel = LowRankTableKernel(terms, spacing, trunc=trunc)
    if kernel.max_error > tol or max(kernel.window) > 64:
        return None
    return kernel


def _table_q(sigma, radius, spacing):
    """Sub-voxel lattice factors per axis: step ~ sigma / 12 (trilinear error ~ 1e-3 of the
    peak), reduced uniformly if the polyphase table would exceed ``_TABLE_MAX`` entries."""
    q = [max(1, int(math.ceil(s / (_TABLE_STEP * sg)))) for s, sg in zip(spacing, sigma)]
    W = _window_size(radius, spacing)
    while math.prod(qa + 2 for qa in q) * math.prod(W) > _TABLE_MAX and max(q) > 1:
        q = [max(1, int(qa * 0.8)) for qa in q]
    return tuple(q)
