"""A PSF followed by the block average of a coarse level (and an optional extra Gaussian blur).

The coarse levels of a fit (:mod:`deltamic_core.fit.levels`) compare the model with the mean of
f^3 fine voxels. That mean is a point sample of the object blurred by the PSF and by the
discrete box of f samples per axis, so the coarse model uses this wrapper. Fourier route: the
OTF times the box's transfer function, the Dirichlet kernel D_f per axis. Real-space route
(:mod:`deltamic_core.render.route`): for an axis-aligned Gaussian, per axis the mean of f
Gaussians shifted by (m - (f - 1) / 2) s, m = 0 .. f-1, of sigma sqrt(sigma^2 + blur^2); the
same function exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BlockAveragedPSF", "dirichlet_kernel"]


def dirichlet_kernel(k: torch.Tensor, factor: int, spacing_um: float) -> torch.Tensor:
    """Transfer function of the mean of ``factor`` samples spaced ``spacing_um`` apart and
    centred on 0: sin(pi f s k) / (f sin(pi s k)), 1 at k = 0 (k in cycles/um)."""
    a = math.pi * spacing_um * k
    small = a.abs() < 1e-6
    den = factor * torch.sin(torch.where(small, torch.ones_like(a), a))
    val = torch.sin(factor * a) / den
    return torch.where(small, torch.ones_like(a), val)


class BlockAveragedPSF(nn.Module):
    """``psf`` followed by the block average of ``factor`` samples (fine spacing
    ``spacing_um``) per axis, and optionally by an isotropic Gaussian of standard deviation
    ``blur_um`` (um). Shares the wrapped model's parameters (learning the PSF on a coarse
    level updates the original model)."""

    def __init__(self, psf: nn.Module, factor: int, spacing_um, blur_um: float = 0.0):
        super().__init__()
        self.inner = psf
        self.factor = int(factor)
        self.fine_spacing_um = tuple(float(s) for s in spacing_um)
        self.blur_um = float(blur_um)

    def otf(self, grid, dtype=torch.float32, device=None) -> torch.Tensor:
        base = self.inner.otf(grid, dtype=dtype, device=device)
        fz, fy, fx = grid.freq_grid(dtype=torch.float64, device=base.device)
        f, (sz, sy, sx) = self.factor, self.fine_spacing_um
        box = dirichlet_kernel(fz, f, sz) * dirichlet_kernel(fy, f, sy) * dirichlet_kernel(fx, f, sx)
        if self.blur_um > 0:
            box = box * torch.exp(-2.0 * math.pi**2 * self.blur_um**2 * (fz * fz + fy * fy + fx * fx))
        return base * box.to(base.real.dtype)

    def extent_um(self) -> tuple[float, float, float]:
        return tuple(
            e + 0.5 * self.factor * s + 4.0 * self.blur_um for e, s in zip(self.inner.extent_um(), self.fine_spacing_um)
        )

    def as_dict(self) -> dict:
        return self.inner.as_dict()
