"""Voxel integration as a PSF wrapper: the detector averages the blurred image over each voxel."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_spacing
from ..grid import FFTGrid
from ._base import PARAM_DTYPE, PSFModel, _check_dtype, _check_grid


class VoxelIntegrated(PSFModel):
    r"""``psf`` followed by integration over a voxel box of size ``spacing_um`` (z, y, x).

    A camera pixel (and a confocal scan averaged over the pixel dwell) records the mean of the
    blurred image over the voxel rather than its value at the voxel centre. The mean over a
    box of side s_i centred on the voxel centre is a convolution with the normalised box,
    whose transform is prod_i sinc(k_i s_i) (sinc(x) = sin(pi x) / (pi x)), so

        OTF_wrapped(k) = OTF_psf(k) * sinc(k_z s_z) sinc(k_y s_y) sinc(k_x s_x).

    Sampling the result at the voxel centres (what the renderer does) is then exactly the
    integrated image. The wrapped model's parameters stay learnable (they are this module's
    ``psf.*`` parameters); the box is fixed. Use the image's voxel size: at coarse levels of a
    fit the image is block-averaged, which is a further box the fit models separately.
    """

    def __init__(self, psf: PSFModel, spacing_um):
        super().__init__()
        if not isinstance(psf, PSFModel):
            raise TypeError(f"psf must be a PSFModel, got {type(psf).__name__}")
        self.psf_model = psf
        self.spacing_um = check_spacing(spacing_um, "spacing_um")

    def otf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        grid = _check_grid(grid)
        _check_dtype(dtype)
        dev = self._device(device)
        inner = self.psf_model.otf(grid, dtype=dtype, device=dev)
        fz, fy, fx = grid.freqs(PARAM_DTYPE, dev)
        sz, sy, sx = self.spacing_um
        box = (
            torch.sinc(fz * sz)[:, None, None] * torch.sinc(fy * sy)[None, :, None] * torch.sinc(fx * sx)[None, None, :]
        )
        return inner * box.to(dtype)

    def extent_um(self) -> tuple[float, float, float]:
        return tuple(float(e) + 0.5 * s for e, s in zip(self.psf_model.extent_um(), self.spacing_um))

    def as_dict(self) -> dict[str, Any]:
        return {"type": "VoxelIntegrated", "spacing_um": list(self.spacing_um), "psf": self.psf_model.as_dict()}

    def describe(self) -> str:
        return f"VoxelIntegrated({self.psf_model.describe()}, spacing_um={tuple(round(s, 4) for s in self.spacing_um)})"

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> VoxelIntegrated:
        return cls(PSFModel.from_dict(d["psf"]), d["spacing_um"])
