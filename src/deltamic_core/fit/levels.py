"""Coarse-to-fine helpers: the block-averaged image and the matching forward model.

A coarse level fits ``block_average(image, f)``. Each coarse voxel is the mean of f^3 point
samples (spacing s) of the blurred object, i.e. a point sample of the object blurred by the PSF
*and* by the discrete box of those f samples. The box's transfer function per axis is the
Dirichlet kernel D_f(k) = sin(pi f s k) / (f sin(pi s k)), so the coarse renderer uses the PSF
wrapped by :class:`~deltamic_core.psf.BlockAveragedPSF` (OTF * prod_axis D_f): without it the coarse level would
converge to a biased surface (too thin a modelled membrane).

A coarse level can also be a level of a Gaussian scale space: the block-averaged image is
blurred by an extra isotropic Gaussian (``gaussian_blur``) and the model by the same Gaussian
(``BlockAveragedPSF(..., blur_um=...)``), so the model stays exact for the blurred data while
the data term reaches a membrane several micrometres away from the current surface (a PSF of a
few hundred nanometres only "sees" membranes within about one PSF width; seeds are often
further off than that).
"""

from __future__ import annotations

import numpy as np
import torch

from ..psf.block import BlockAveragedPSF, dirichlet_kernel  # noqa: F401 - re-exported (the optics live in psf)

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
