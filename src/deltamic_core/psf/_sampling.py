"""Alias-free OTFs of band-limited PSF models sampled on an FFTGrid.

A widefield PSF is band limited: laterally to 2 NA / lambda, axially to
(n - sqrt(n^2 - NA^2)) / lambda (cycles/um). Microscope images routinely undersample it (a
0.1 um pixel is coarser than lambda / (4 NA) ~ 0.09 um at NA 1.4; z steps of 0.3-1 um are far
coarser than the axial Nyquist step). The DFT of PSF samples taken on such a grid is the
*aliased* OTF, whereas the renderer multiplies the exact object spectrum by the OTF, so it
needs the *continuous* OTF at the grid frequencies. We therefore sample the PSF on a grid
covering the same box with ``m`` times more samples per axis (fine enough for Nyquist), take
its DFT (whose frequency step 1 / box is unchanged) and keep only the coarse grid's
frequencies. The result is the continuous OTF of the box-periodised PSF at the grid
frequencies, exact up to the PSF tails that leave the box (the renderer pads the box by
``extent_um()`` for that reason).
"""

from __future__ import annotations

import functools
import math

import torch

from .._checks import check_memory
from ..grid import FFTGrid


def oversampling_factors(
    grid: FFTGrid, cutoff_cyc_per_um: tuple[float, float, float], oversampling: float = 1.0
) -> tuple[int, int, int]:
    """Smallest integer factors m (z, y, x) such that spacing / m samples a signal band
    limited to ``cutoff`` above its Nyquist rate (times ``oversampling`` >= 1)."""
    out = []
    for s, c in zip(grid.spacing_um, cutoff_cyc_per_um):
        # need 1 / (s / m) > 2 c  ->  m > 2 c s
        out.append(max(1, int(math.floor(2.0 * c * s * oversampling)) + 1))
    return tuple(out)


def fine_grid(grid: FFTGrid, factors: tuple[int, int, int]) -> FFTGrid:
    """The same box sampled ``factors`` times more densely (same frequency step)."""
    return FFTGrid(
        tuple(n * m for n, m in zip(grid.shape, factors)),
        tuple(s / m for s, m in zip(grid.spacing_um, factors)),
        grid.origin_um,
    )


def crop_spectrum(spec_fine: torch.Tensor, grid: FFTGrid) -> torch.Tensor:
    """Pick the coarse grid's rfft frequencies out of the rfft spectrum of a finer grid on the
    same box (``spec_fine`` of shape ``fine.rfft_shape``)."""
    nz, ny, nx = grid.shape
    fz_n, fy_n, _ = spec_fine.shape
    dev = spec_fine.device
    iz = torch.fft.fftfreq(nz, d=1.0 / nz, device=dev).round().long() % fz_n
    iy = torch.fft.fftfreq(ny, d=1.0 / ny, device=dev).round().long() % fy_n
    return spec_fine[iz][:, iy][:, :, : nx // 2 + 1]


def check_volume_memory(shape, bytes_per_voxel: int, what: str) -> None:
    n = 1
    for s in shape:
        n *= int(s)
    check_memory(float(n) * bytes_per_voxel, what)


class _BesselJ0(torch.autograd.Function):
    """J0 with its derivative -J1 (torch.special.bessel_j0 has no autograd formula)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.special.bessel_j0(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * torch.special.bessel_j1(x)


def bessel_j0(x: torch.Tensor) -> torch.Tensor:
    """Differentiable Bessel function of the first kind, order 0."""
    return _BesselJ0.apply(x)


class _BesselJ1(torch.autograd.Function):
    """J1 with its derivative J0 - J1 / x (-> 1/2 at x = 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.special.bessel_j1(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        small = x.abs() < 1e-4
        safe = torch.where(small, torch.ones_like(x), x)
        d = torch.special.bessel_j0(x) - torch.special.bessel_j1(x) / safe
        return g * torch.where(small, 0.5 - 0.1875 * x * x, d)


def bessel_j1(x: torch.Tensor) -> torch.Tensor:
    """Differentiable Bessel function of the first kind, order 1."""
    return _BesselJ1.apply(x)


def bessel_j2(x: torch.Tensor) -> torch.Tensor:
    """Differentiable J2 = 2 J1(x) / x - J0(x) (x^2 / 8 - x^4 / 96 near 0, where the recurrence
    cancels)."""
    small = x.abs() < 1e-2
    safe = torch.where(small, torch.ones_like(x), x)
    rec = 2.0 * bessel_j1(safe) / safe - bessel_j0(safe)
    x2 = x * x
    return torch.where(small, x2 / 8.0 - x2 * x2 / 96.0, rec)


@functools.lru_cache(maxsize=64)
def _leggauss_np(n: int):
    from scipy.special import roots_legendre

    x, w = roots_legendre(int(n))
    return 0.5 * (x + 1.0), 0.5 * w


def leggauss(n: int, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [0, 1] (cached per n)."""
    x, w = _leggauss_np(int(n))
    return torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device)


def interp1d_uniform(y: torch.Tensor, step: float, x: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of samples ``y[..., i]`` at positions i * step, evaluated at
    ``x`` (any shape, clamped to the sampled range); returns ``y.shape[:-1] + x.shape``."""
    n = y.shape[-1]
    t = (x / step).clamp(0.0, n - 1.000001)
    i0 = t.floor().long()
    frac = (t - i0.to(t.dtype)).to(y.dtype if not y.is_complex() else t.dtype)
    flat0, flat1 = i0.reshape(-1), (i0 + 1).reshape(-1)
    y0 = y[..., flat0]
    y1 = y[..., flat1]
    f = frac.reshape(-1)
    out = y0 + (y1 - y0) * f
    return out.reshape(y.shape[:-1] + x.shape)
