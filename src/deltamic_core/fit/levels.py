"""Coarse-to-fine helpers: the block-averaged image and the matching forward model.

A coarse level fits ``block_average(image, f)``. Each coarse voxel is the mean of f^3 point
samples (spacing s) of the blurred object, i.e. a point sample of the object blurred by the PSF
*and* by the discrete box of those f samples. The box's transfer function per axis is the
Dirichlet kernel D_f(k) = sin(pi f s k) / (f sin(pi s k)), so the coarse renderer uses the PSF
wrapped by :class:`BlockAveragedPSF` (OTF * prod_axis D_f): without it the coarse level would
converge to a biased surface (too thin a modelled membrane).

A coarse level can also be a level of a Gaussian scale space: the block-averaged image is
blurred by an extra isotropic Gaussian (``gaussian_blur``) and the model by the same Gaussian
(``BlockAveragedPSF(..., blur_um=...)``), so the model stays exact for the blurred data while
the data term reaches a membrane several micrometres away from the current surface (a PSF of a
few hundred nanometres only "sees" membranes within about one PSF width; seeds are often
further off than that).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["block_average", "gaussian_blur", "BlockAveragedPSF"]


def block_average(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over ``factor``^3 blocks (trailing voxels that do not fill a block are dropped).

    The voxel (i, j, l) of the result covers input voxels ``i*factor ... i*factor+factor-1``
    (per axis), so its centre sits at ``origin + (i*factor + (factor-1)/2) * spacing``.
    """
    if factor == 1:
        return image
    nz, ny, nx = (s // factor for s in image.shape)
    if min(nz, ny, nx) < 1:
        raise ValueError(f"image of shape {tuple(image.shape)} is smaller than the downsampling factor {factor}")
    x = image[: nz * factor, : ny * factor, : nx * factor]
    return x.reshape(nz, factor, ny, factor, nx, factor).mean(dim=(1, 3, 5))


def gaussian_blur(image: torch.Tensor, sigma_um: float, spacing_um) -> torch.Tensor:
    """Isotropic Gaussian blur of standard deviation ``sigma_um`` (um) on a grid of voxel size
    ``spacing_um`` (z, y, x). Borders are extended by their nearest value (the data beyond the
    box are unknown; a constant continuation is the least biased guess for a background)."""
    if sigma_um <= 0:
        return image
    from scipy.ndimage import gaussian_filter

    arr = image.detach().cpu().numpy().astype(np.float64)
    out = gaussian_filter(arr, [sigma_um / s for s in spacing_um], mode="nearest", truncate=4.0)
    return torch.from_numpy(out).to(dtype=image.dtype, device=image.device)


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
