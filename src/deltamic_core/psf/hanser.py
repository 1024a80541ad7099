"""Pupil-function (Hanser) PSF with Zernike aberrations, in torch."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..grid import FFTGrid
from ._base import PARAM_DTYPE, SampledPSFModel, _finite, _positive, _sampling_settings
from .zernike import noll_to_nm, zernike_noll

_APODIZATIONS = ("sine", "herschel", "none")


class HanserPSF(SampledPSFModel):
    r"""Scalar pupil-function PSF (B. M. Hanser et al., J. Microsc. 216(1):32, 2004).

    The pupil lives on the lateral frequency disc |k| <= NA / lambda (cycles/um):

        P(k) = A(k) exp(2 pi i sum_j c_j Z_j(|k| lambda / NA, phi)),    c_j in waves
        field(x, y, z) = inverse 2D FT of P(k) exp(2 pi i k_z z),  k_z = sqrt((n/lambda)^2 - |k|^2)
        PSF(x, y, z) = |field|^2

    with Zernike polynomials Z_j in Noll order, unit RMS (:mod:`.zernike`), and the
    apodisation A = 1/sqrt(cos theta) ("sine" condition, sin theta = |k| lambda / n),
    1/cos theta ("herschel") or 1 ("none"). The pupil edge is "hard" (indicator of the
    disc on the frequency grid) or "soft" (linear ramp one frequency step wide, which
    makes the PSF differentiable w.r.t. NA and reduces staircase artefacts).

    The defocus sign follows pyotf (exp(+2 pi i k_z z), inverse transform kernel
    exp(+2 pi i k.x)); the aberration-free PSF is symmetric in z either way.
    The field is computed on an oversampled copy of the grid (the pupil must fit in the
    frequency box and the intensity must be alias free, see ``SampledPSFModel``).

    Parameters
    ----------
    na, wavelength_um, n_immersion : numerical aperture, emission wavelength (um),
        immersion refractive index (na < n_immersion).
    zernike : {noll_index: coefficient_in_waves}; the coefficients are learnable.
    apodization : "sine" (default), "herschel" or "none".
    pupil_edge : "soft" (default) or "hard".
    oversampling, extent_threshold, max_extent_um : as in :class:`GibsonLanniPSF`.
    learn : learnable parameters among ``zernike, na, wavelength_um, n_immersion``.
    """

    def __init__(
        self,
        na: float = 1.4,
        wavelength_um: float = 0.6,
        n_immersion: float = 1.515,
        zernike: dict | None = None,
        *,
        apodization: str = "sine",
        pupil_edge: str = "soft",
        oversampling: float = 1.0,
        extent_threshold: float = 1e-3,
        max_extent_um=(12.0, 8.0, 8.0),
        learn=("zernike",),
    ):
        super().__init__()
        na = _positive(na, "na")
        lam = _positive(wavelength_um, "wavelength_um")
        n = _positive(n_immersion, "n_immersion")
        if na >= n:
            raise ValueError(f"na must be smaller than n_immersion (na={na}, n_immersion={n})")
        learn = (learn,) if isinstance(learn, str) else tuple(learn)
        unknown = set(learn) - {"zernike", "na", "wavelength_um", "n_immersion"}
        if unknown:
            raise ValueError(
                f"learn names unknown parameters {sorted(unknown)}; choose from zernike, na, wavelength_um, n_immersion"
            )
        self._add_positive("na", na, "na" in learn)
        self._add_positive("wavelength_um", lam, "wavelength_um" in learn)
        self._add_positive("n_immersion", n, "n_immersion" in learn)
        zernike = {} if zernike is None else zernike
        if not isinstance(zernike, dict):
            raise TypeError(
                f"zernike must be a dict {{noll_index: coefficient_in_waves}}, got {type(zernike).__name__}"
            )
        idx, coef = [], []
        for j, c in sorted(zernike.items(), key=lambda kv: int(kv[0])):
            try:
                noll_to_nm(int(j))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"zernike has a bad key {j!r}: {exc}") from None
            idx.append(int(j))
            coef.append(_finite(c, f"zernike[{j}]"))
        self.register_buffer("zernike_index", torch.tensor(idx, dtype=torch.int64))
        coef_t = torch.tensor(coef, dtype=PARAM_DTYPE)
        if "zernike" in learn:
            self.zernike_waves = nn.Parameter(coef_t)
        else:
            self.register_buffer("zernike_waves", coef_t)
        if apodization not in _APODIZATIONS:
            raise ValueError(f"apodization must be one of {_APODIZATIONS}, got {apodization!r}")
        if pupil_edge not in ("soft", "hard"):
            raise ValueError(f"pupil_edge must be 'soft' or 'hard', got {pupil_edge!r}")
        self.apodization, self.pupil_edge = apodization, pupil_edge
        self.oversampling, self.extent_threshold, self.max_extent_um = _sampling_settings(
            oversampling, extent_threshold, max_extent_um
        )
        self._extent_cache: tuple | None = None

    na = property(lambda self: self._pos("na"))
    wavelength_um = property(lambda self: self._pos("wavelength_um"))
    n_immersion = property(lambda self: self._pos("n_immersion"))

    @property
    def zernike(self) -> dict[int, float]:
        return {int(j): float(c) for j, c in zip(self.zernike_index.tolist(), self.zernike_waves.detach().cpu())}

    def _scalars(self) -> tuple[float, float, float]:
        na, lam, n = (float(t.detach()) for t in (self.na, self.wavelength_um, self.n_immersion))
        if not na < n:
            raise ValueError(f"na ({na:.4g}) must stay below n_immersion ({n:.4g})")
        return na, lam, n

    def _band_limits(self) -> tuple[float, float]:
        na, lam, n = self._scalars()
        return (n - math.sqrt(n * n - na * na)) / lam, 2.0 * na / lam

    # -- the physics ---------------------------------------------------------------------
    def pupil(self, ky: torch.Tensor, kx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pupil P (complex) and k_z (real) on the lateral frequencies ``ky[:, None]``,
        ``kx[None, :]`` (1D, cycles/um, float64)."""
        na, lam, n = self.na, self.wavelength_um, self.n_immersion
        kyy, kxx = ky[:, None], kx[None, :]
        kr = torch.sqrt(kyy**2 + kxx**2)
        kcut = na / lam
        if self.pupil_edge == "hard":
            amp = (kr <= kcut).to(kr.dtype)
        else:
            dk = max(float(ky[1] - ky[0]) if ky.numel() > 1 else 0.0, float(kx[1] - kx[0]) if kx.numel() > 1 else 0.0)
            amp = torch.clamp(0.5 + (kcut - kr) / dk, 0.0, 1.0)
        kmag = n / lam
        sin_t = torch.clamp(kr / kmag, max=1.0)
        inside = amp > 0
        cos_t = torch.sqrt(torch.clamp(1.0 - sin_t**2, min=1e-12))
        if self.apodization == "sine":
            amp = amp * torch.where(inside, cos_t, torch.ones_like(cos_t)) ** -0.5
        elif self.apodization == "herschel":
            amp = amp / torch.where(inside, cos_t, torch.ones_like(cos_t))
        kz = torch.sqrt(torch.clamp(kmag**2 - kr**2, min=0.0))
        if self.zernike_index.numel():
            rho = torch.clamp(kr / kcut, max=1.0)
            phi = torch.atan2(kyy.expand_as(kr), kxx.expand_as(kr))
            waves = torch.zeros_like(kr)
            for j, c in zip(self.zernike_index.tolist(), self.zernike_waves.to(kr.device)):
                waves = waves + c * zernike_noll(j, rho, phi)
            pupil = amp * torch.exp(2j * math.pi * waves)
        else:
            pupil = amp.to(torch.complex128)
        return pupil, kz

    def field(self, z_um: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
        """Amplitude PSF (Nz, Ny, Nx) in FFT order at planes ``z_um`` on the real-space grid
        whose frequencies are ``ky``, ``kx`` (full fftfreq axes)."""
        pupil, kz = self.pupil(ky, kx)
        prop = torch.exp(2j * math.pi * kz[None] * z_um[:, None, None])
        return torch.fft.ifft2(pupil[None] * prop)

    def _intensity(self, fine: FFTGrid, device) -> torch.Tensor:
        z, _, _ = fine.centred_coords(dtype=PARAM_DTYPE, device=device)
        ny, nx = fine.shape[1:]
        ky = torch.fft.fftfreq(ny, d=fine.spacing_um[1], dtype=PARAM_DTYPE, device=device)
        kx = torch.fft.fftfreq(nx, d=fine.spacing_um[2], dtype=PARAM_DTYPE, device=device)
        f = self.field(z, ky, kx)
        return f.real**2 + f.imag**2

    # -- extent --------------------------------------------------------------------------
    def extent_um(self) -> tuple[float, float, float]:
        """Half-widths (z, y, x) where the PSF exceeds ``extent_threshold`` of its peak,
        searched within (and bounded by) ``max_extent_um``."""
        na, lam, n = self._scalars()
        key = (na, lam, n, tuple(self.zernike.items()), self.apodization, self.extent_threshold, self.max_extent_um)
        if self._extent_cache is not None and self._extent_cache[0] == key:
            return self._extent_cache[1]
        fz_cut, _ = self._band_limits()
        dz = 0.25 / fz_cut
        dxy = 0.45 * lam / na  # field Nyquist: exact point samples of the intensity
        zmax = self.max_extent_um[0]
        half = max(self.max_extent_um[1:])
        nxy = 2 * int(math.ceil(1.5 * half / dxy))  # a box 1.5x the search range: little wrap
        dev = self._device(None)
        with torch.no_grad():
            z = torch.arange(-math.ceil(zmax / dz), math.ceil(zmax / dz) + 1, dtype=PARAM_DTYPE, device=dev) * dz
            k = torch.fft.fftfreq(nxy, d=dxy, dtype=PARAM_DTYPE, device=dev)
            c = torch.fft.fftfreq(nxy, d=1.0 / nxy, dtype=PARAM_DTYPE, device=dev) * dxy
            f = self.field(z, k, k)
            h = f.real**2 + f.imag**2
            keep = h >= self.extent_threshold * h.max()
            zs = z[keep.flatten(1).any(dim=1)].abs().max().item() + dz
            sub = keep[z.abs() <= zs]
            ys = c[sub.any(dim=2).any(dim=0)].abs().max().item() + dxy
            xs = c[sub.any(dim=1).any(dim=0)].abs().max().item() + dxy
        ext = (min(zs, self.max_extent_um[0]), min(ys, self.max_extent_um[1]), min(xs, self.max_extent_um[2]))
        self._extent_cache = (key, ext)
        return ext

    # -- reports -------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        na, lam, n = self._scalars()
        learn = [
            k for k in ("na", "wavelength_um", "n_immersion") if isinstance(getattr(self, "log_" + k), nn.Parameter)
        ]
        if isinstance(self.zernike_waves, nn.Parameter):
            learn.append("zernike")
        return {
            "type": "HanserPSF",
            "na": na,
            "wavelength_um": lam,
            "n_immersion": n,
            "zernike": self.zernike,
            "apodization": self.apodization,
            "pupil_edge": self.pupil_edge,
            "oversampling": self.oversampling,
            "extent_threshold": self.extent_threshold,
            "max_extent_um": list(self.max_extent_um),
            "learn": learn,
        }

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> HanserPSF:
        kw = {k: v for k, v in d.items() if k != "type"}
        if "zernike" in kw:
            kw["zernike"] = {int(j): float(c) for j, c in kw["zernike"].items()}
        if "max_extent_um" in kw:
            kw["max_extent_um"] = tuple(kw["max_extent_um"])
        return cls(**kw)
