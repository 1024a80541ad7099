"""The PSF model interface shared by every point-spread-function model.

A PSF model is an :class:`torch.nn.Module` whose learnable parameters are physical
quantities (widths in micrometres, numerical aperture, depths, Zernike coefficients...).
The renderer only ever asks for three things:

- :meth:`PSFModel.otf`: the optical transfer function sampled at the rfft frequencies of an
  :class:`~deltamic_core.grid.FFTGrid` (cycles/um, kernel exp(-2 pi i k.x)), for a PSF centred
  at the origin, normalised so OTF(0) = 1;
- :meth:`PSFModel.extent_um`: half-widths (z, y, x) outside which the PSF is negligible, so
  the renderer can pad its FFT box and avoid wrap-around;
- :meth:`PSFModel.psf`: the real-space PSF on a grid in FFT order (centre at index 0), as a
  density in 1/um^3 (``psf.sum() * grid.voxel_volume_um3`` is ~1), for previews.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..grid import FFTGrid

# Internal precision of every model: physical parameters and PSF/OTF arithmetic are float64;
# the result is cast to the dtype the caller asks for (the cast is differentiable).
PARAM_DTYPE = torch.float64


def _sampling_settings(oversampling, extent_threshold, max_extent_um) -> tuple[float, float, tuple]:
    """Validated sampling knobs shared by the models computed on a grid (Gibson-Lanni, Hanser):
    oversampling >= 1, extent_threshold in (0, 1), max_extent_um three positive numbers."""
    import numpy as np

    over = _positive(oversampling, "oversampling")
    if over < 1:
        raise ValueError(f"oversampling must be >= 1, got {over}")
    thr = _positive(extent_threshold, "extent_threshold")
    if thr >= 1:
        raise ValueError(f"extent_threshold must be in (0, 1), got {thr}")
    me = np.asarray(max_extent_um, dtype=float).reshape(-1)
    if me.size == 1:
        me = np.repeat(me, 3)
    if me.size != 3 or not np.all(np.isfinite(me)) or np.any(me <= 0):
        raise ValueError(f"max_extent_um must be three positive numbers (z, y, x), got {max_extent_um!r}")
    return over, thr, tuple(float(v) for v in me)


def _positive(value, name: str) -> float:
    """A finite, strictly positive scalar."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive and finite, got {v}")
    return v


def _nonnegative(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be non-negative and finite, got {v}")
    return v


def _finite(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check_grid(grid) -> FFTGrid:
    if not isinstance(grid, FFTGrid):
        raise TypeError(f"grid must be a deltamic_core.grid.FFTGrid, got {type(grid).__name__}")
    return grid


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


class PSFModel(nn.Module):
    """Base class of the PSF/OTF models (see the module docstring for the contract).

    Subclasses implement :meth:`otf`, :meth:`extent_um` and :meth:`as_dict`; :meth:`psf`
    defaults to the inverse real FFT of the OTF divided by the voxel volume (the periodised,
    band-limited PSF on that grid).
    """

    def _device(self, device) -> torch.device:
        if device is not None:
            return torch.device(device)
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def otf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        """``model(grid)`` is ``model.otf(grid)`` (so ``torch.func.functional_call`` works)."""
        return self.otf(grid, dtype=dtype, device=device)

    def extent_um(self) -> tuple[float, float, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def psf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        """Real-space PSF on ``grid`` in FFT order, a density in 1/um^3.

        Returns
        -------
        Tensor (Z, Y, X) of ``dtype``; ``psf.sum() * grid.voxel_volume_um3`` ~ 1.
        """
        grid = _check_grid(grid)
        _check_dtype(dtype)
        o = self.otf(grid, dtype=torch.float64, device=device)
        h = torch.fft.irfftn(o, s=grid.shape) / grid.voxel_volume_um3
        return h.to(dtype)

    # -- positive physical parameters stored as logs ---------------------------------------
    def _add_positive(self, name: str, value: float, learnable: bool) -> None:
        """Store log(value) as ``log_<name>``: a Parameter when learnable, else a buffer."""
        t = torch.log(torch.tensor(float(value), dtype=PARAM_DTYPE))
        if learnable:
            self.register_parameter("log_" + name, nn.Parameter(t))
        else:
            self.register_buffer("log_" + name, t)

    def _add_real(self, name: str, value: float, learnable: bool) -> None:
        t = torch.tensor(float(value), dtype=PARAM_DTYPE)
        if learnable:
            self.register_parameter(name + "_", nn.Parameter(t))
        else:
            self.register_buffer(name + "_", t)

    def _pos(self, name: str) -> torch.Tensor:
        return torch.exp(getattr(self, "log_" + name))

    # -- reports and persistence ---------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        """One line with the model name and its physical parameter values."""
        d = self.as_dict()
        kind = d.pop("type")
        parts = []
        for k, v in d.items():
            parts.append(f"{k}={_fmt(v)}")
        return f"{kind}(" + ", ".join(parts) + ")"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PSFModel:
        """Rebuild a model from :meth:`as_dict` output (dispatching on ``d['type']``)."""
        from . import _REGISTRY

        if not isinstance(d, dict) or "type" not in d:
            raise ValueError("d must be a dict produced by as_dict() with a 'type' key")
        kind = d["type"]
        target = _REGISTRY.get(kind)
        if target is None:
            raise ValueError(f"d['type'] names an unknown PSF model {kind!r}; known: {sorted(_REGISTRY)}")
        if cls is not PSFModel and not issubclass(target, cls):
            raise ValueError(f"d describes a {kind}, not a {cls.__name__}")
        return target._from_dict(d)


class SampledPSFModel(PSFModel):
    """A model whose PSF is evaluated numerically on a grid, and whose OTF is the DFT of
    that PSF sampled finely enough to be alias free (see ``_sampling``).

    Subclasses implement ``_band_limits()`` -> (axial, lateral) cut-off frequencies in
    cycles/um and ``_intensity(fine_grid)`` -> un-normalised PSF samples (Z, Y, X) float64
    in FFT order on ``fine_grid``.
    """

    oversampling: float = 1.0

    def _fine_intensity(self, grid: FFTGrid, device=None):
        from ._sampling import check_volume_memory, fine_grid, oversampling_factors

        fz_cut, fr_cut = self._band_limits()
        factors = oversampling_factors(grid, (fz_cut, fr_cut, fr_cut), self.oversampling)
        fine = fine_grid(grid, factors)
        check_volume_memory(fine.shape, 48, f"{type(self).__name__} on a {fine.shape} oversampled grid")
        return self._intensity(fine, self._device(device)), factors, fine

    def otf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        """OTF at ``grid``'s rfft frequencies, complex of ``grid.rfft_shape``, OTF(0) = 1.

        The PSF is sampled on an oversampled copy of ``grid`` (same box, spacing divided by
        the smallest integer that beats the Nyquist rate of the PSF's band limits), so the
        result is the continuous OTF, not the aliased DFT of an undersampled PSF."""
        from ._sampling import crop_spectrum

        grid = _check_grid(grid)
        _check_dtype(dtype)
        inten, _, _ = self._fine_intensity(grid, device)
        spec = crop_spectrum(torch.fft.rfftn(inten), grid)
        spec = spec / spec[0, 0, 0].real
        return spec.to(dtype.to_complex())

    def psf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        """Point samples of the PSF at ``grid``'s FFT-order coordinates, a density in 1/um^3
        normalised by the PSF's integral over the box (computed on the alias-free fine grid),
        so ``psf.sum() * voxel_volume`` is 1 when the grid samples the PSF finely."""
        grid = _check_grid(grid)
        _check_dtype(dtype)
        inten, (mz, my, mx), fine = self._fine_intensity(grid, device)
        total = inten.sum() * fine.voxel_volume_um3
        return (inten[::mz, ::my, ::mx] / total).to(dtype)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return repr(v)
