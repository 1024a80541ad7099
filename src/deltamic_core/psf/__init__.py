"""PSF/OTF models (contract in DEVELOPERS.md, section "psf").

Every model is an :class:`torch.nn.Module` with physical, learnable parameters exposing
``otf(grid, dtype, device)`` (OTF at the grid's rfft frequencies, OTF(0) = 1),
``extent_um()`` (half-widths for padding) and ``psf(grid)`` (real-space preview, FFT order).
"""

from __future__ import annotations

from ._base import PSFModel
from .block import BlockAveragedPSF
from .confocal import ConfocalPSF
from .gaussian import GaussianPSF
from .gibson_lanni import GibsonLanniPSF
from .hanser import HanserPSF
from .measured import MeasuredPSF
from .voxel import VoxelIntegrated
from .zernike import noll_to_nm, zernike_noll

__all__ = [
    "PSFModel",
    "BlockAveragedPSF",
    "GaussianPSF",
    "GibsonLanniPSF",
    "HanserPSF",
    "MeasuredPSF",
    "ConfocalPSF",
    "VoxelIntegrated",
    "noll_to_nm",
    "zernike_noll",
    "psf_from_dict",
]

_REGISTRY = {
    "GaussianPSF": GaussianPSF,
    "GibsonLanniPSF": GibsonLanniPSF,
    "HanserPSF": HanserPSF,
    "MeasuredPSF": MeasuredPSF,
    "ConfocalPSF": ConfocalPSF,
    "VoxelIntegrated": VoxelIntegrated,
}


def psf_from_dict(d) -> PSFModel:
    """Rebuild any PSF model from its ``as_dict()`` output."""
    return PSFModel.from_dict(d)
