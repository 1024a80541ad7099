"""The sampling grid shared by PSF models and the renderer.

A :class:`FFTGrid` is a box of voxels in physical space: ``shape`` voxels (z, y, x) of size
``spacing_um``, the centre of voxel (0, 0, 0) at ``origin_um``. Its frequencies follow the
``torch.fft.fftfreq``/``rfftfreq`` convention in cycles per micrometre, so the real-to-complex
half spectrum of an image on this grid has shape ``rfft_shape`` and the frequency of entry
(i, j, l) is (fz[i], fy[j], fx[l]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_shape, check_spacing, check_vector3


@dataclass(frozen=True)
class FFTGrid:
    shape: tuple[int, int, int]
    spacing_um: tuple[float, float, float]
    origin_um: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        object.__setattr__(self, "shape", check_shape(self.shape, "shape"))
        object.__setattr__(self, "spacing_um", check_spacing(self.spacing_um, "spacing_um"))
        object.__setattr__(self, "origin_um", check_vector3(self.origin_um, "origin_um"))

    @property
    def rfft_shape(self) -> tuple[int, int, int]:
        nz, ny, nx = self.shape
        return (nz, ny, nx // 2 + 1)

    @property
    def extent_um(self) -> tuple[float, float, float]:
        """Physical size of the (periodic) box: shape * spacing."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing_um))

    @property
    def voxel_volume_um3(self) -> float:
        sz, sy, sx = self.spacing_um
        return sz * sy * sx

    def freqs(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1D frequency axes (fz, fy, fx) in cycles/um for the rfft half spectrum."""
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing_um
        return (
            torch.fft.fftfreq(nz, d=sz, dtype=dtype, device=device),
            torch.fft.fftfreq(ny, d=sy, dtype=dtype, device=device),
            torch.fft.rfftfreq(nx, d=sx, dtype=dtype, device=device),
        )

    def freq_grid(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Broadcastable (fz[:, None, None], fy[None, :, None], fx[None, None, :])."""
        fz, fy, fx = self.freqs(dtype, device)
        return fz[:, None, None], fy[None, :, None], fx[None, None, :]

    def coords(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1D voxel-centre coordinates (z, y, x) in micrometres."""
        return tuple(
            o + s * torch.arange(n, dtype=dtype, device=device)
            for o, s, n in zip(self.origin_um, self.spacing_um, self.shape)
        )

    def centred_coords(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1D coordinates of a PSF stored in FFT order (index 0 = the PSF centre, negative
        offsets wrapped to the end): s * fftfreq(n) * n. Useful to sample a PSF in real space
        so that ``torch.fft.rfftn`` of it is the OTF without phase ramps."""
        return tuple(
            s * torch.fft.fftfreq(n, dtype=dtype, device=device) * n for s, n in zip(self.spacing_um, self.shape)
        )


@dataclass(frozen=True, eq=False)
class GridBand:
    """A subset of an :class:`FFTGrid`'s rfft half spectrum: the frequencies where the OTF
    is significant (the "narrow band"). Backends that exploit the grid structure (nufft) use
    ``index``; the others use ``freqs()``.

    index: (K, 3) int64 (iz, iy, ix) positions in ``grid.rfft_shape``.
    """

    grid: FFTGrid
    index: torch.Tensor

    def __post_init__(self):
        idx = torch.as_tensor(self.index)
        if idx.ndim != 2 or idx.shape[1] != 3 or idx.dtype != torch.int64:
            raise ValueError(f"GridBand.index must be (K, 3) int64, got {tuple(idx.shape)} {idx.dtype}")
        if idx.shape[0] == 0:
            raise ValueError("the band keeps no frequency: lower the band threshold")
        object.__setattr__(self, "index", idx)

    @classmethod
    def from_mask(cls, grid: FFTGrid, mask: torch.Tensor) -> GridBand:
        if tuple(mask.shape) != grid.rfft_shape:
            raise ValueError(f"band mask shape {tuple(mask.shape)} != rfft shape {grid.rfft_shape}")
        return cls(grid, torch.nonzero(mask.to("cpu")).to(torch.int64))

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def fraction(self) -> float:
        """Share of the rfft half spectrum kept."""
        nz, ny, nxh = self.grid.rfft_shape
        return len(self) / (nz * ny * nxh)

    def flat_index(self, device=None) -> torch.Tensor:
        nz, ny, nxh = self.grid.rfft_shape
        i = self.index.to(device) if device is not None else self.index
        return (i[:, 0] * ny + i[:, 1]) * nxh + i[:, 2]

    def signed_modes(self, device=None) -> torch.Tensor:
        """(K, 3) int64 signed integer mode numbers m (frequency = m / (n * spacing))."""
        i = self.index.to(device) if device is not None else self.index
        n = torch.tensor(self.grid.shape, dtype=torch.int64, device=i.device)
        m = i.clone()
        m[:, :2] = torch.where(i[:, :2] >= (n[:2] + 1) // 2, i[:, :2] - n[:2], i[:, :2])
        return m

    def freqs(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """(K, 3) frequencies in cycles/um, (z, y, x) order."""
        m = self.signed_modes(device).to(dtype)
        box = torch.tensor(self.grid.extent_um, dtype=dtype, device=m.device)
        return m / box
