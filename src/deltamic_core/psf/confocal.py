"""Point-scanning confocal PSF: excitation x (emission convolved with the pinhole)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._base import PARAM_DTYPE, _positive
from .gibson_lanni import _POSITIVE, GibsonLanniPSF

AIRY_FACTOR = 0.61  # one Airy unit = 0.61 lambda_em / NA (radius of the first dark ring), sample space


class ConfocalPSF(GibsonLanniPSF):
    r"""PSF of a point-scanning confocal microscope with a circular pinhole.

    The detected intensity for an emitter at (r, z) from the focus is the excitation PSF
    times the emission PSF integrated over the pinhole (imaged back into the sample):

        h(z, r) = h_ex(z, r) * (h_em(z, .) conv_xy D_R)(r),    R = pinhole_au * 0.61 lambda_em / NA

    with h_ex and h_em the scalar Gibson-Lanni widefield PSFs (same objective, immersion,
    sample and depth, see :class:`GibsonLanniPSF`) at the excitation and emission wavelengths,
    and D_R the indicator of a disc of radius R (the pinhole diameter, in Airy units of the
    emission at the nominal NA, is a fixed physical aperture: R is set at construction and is
    not learnt). The lateral convolution of the radially symmetric h_em with the disc is, for a
    point at distance r from the axis, int_0^(r+R) h_em(z, s) s theta(s; r, R) ds, where
    theta is the angle of the circle of radius s around that point lying inside the disc
    (2 arccos((s^2 + r^2 - R^2) / (2 s r)), clipped to [0, 2 pi]); it is evaluated by the
    trapezoidal rule on a radius grid 32x finer than lambda_em / (4 NA) (a fixed matrix, so the
    parameters stay differentiable). ``pinhole_au`` -> infinity gives the widefield excitation
    PSF times a constant (not a limit this class is meant for: use >= 0.1 and <= 20).

    The band limits are the sums of the excitation's and the emission's (the product of two
    PSFs convolves their OTFs); everything else (Hankel-transform OTF, extent, previews,
    learnable parameters) is :class:`GibsonLanniPSF`'s, with ``wavelength_um`` the emission
    wavelength.

    Parameters
    ----------
    na : numerical aperture.
    wavelength_um : emission wavelength (vacuum, um).
    ex_wavelength_um : excitation wavelength (vacuum, um); default = the emission wavelength.
    pinhole_au : pinhole diameter in Airy units (1 is the usual setting).
    n_immersion, n_sample, ... : as :class:`GibsonLanniPSF`.
    """

    def __init__(
        self,
        na: float = 1.4,
        wavelength_um: float = 0.6,
        ex_wavelength_um: float | None = None,
        pinhole_au: float = 1.0,
        *,
        max_extent_um=(6.0, 4.0, 4.0),
        **kw,
    ):
        learn = kw.pop("learn", ("na", "n_sample", "particle_depth_um"))
        learn = (learn,) if isinstance(learn, str) else tuple(learn)
        super().__init__(
            na=na,
            wavelength_um=wavelength_um,
            max_extent_um=max_extent_um,
            learn=tuple(n for n in learn if n != "ex_wavelength_um"),
            **kw,
        )
        ex = _positive(wavelength_um if ex_wavelength_um is None else ex_wavelength_um, "ex_wavelength_um")
        self.pinhole_au = _positive(pinhole_au, "pinhole_au")
        self._add_positive("ex_wavelength_um", ex, "ex_wavelength_um" in learn)
        self.pinhole_radius_um = self.pinhole_au * AIRY_FACTOR * float(wavelength_um) / float(na)

    _lam = None  # excitation wavelength while its profile is evaluated
    _theta_cache = None

    # while evaluating the excitation profile, wavelength_um reads the excitation wavelength
    wavelength_um = property(lambda self: self._lam if self._lam is not None else self._pos("wavelength_um"))
    ex_wavelength_um = property(lambda self: self._pos("ex_wavelength_um"))

    def _values(self) -> dict[str, float]:
        d = super()._values()
        d["ex_wavelength_um"] = float(self.ex_wavelength_um.detach())
        return d

    def _band_limits(self) -> tuple[float, float]:
        v = self._values()
        self._check_physical(v)
        na, ni = v["na"], v["n_immersion"]
        ax = ni - math.sqrt(ni * ni - na * na)
        return ax / v["wavelength_um"] + ax / v["ex_wavelength_um"], 2.0 * na / v["wavelength_um"] + 2.0 * na / v[
            "ex_wavelength_um"
        ]

    def _widefield(self, z_um, r_um, lam=None):
        if lam is None:
            return GibsonLanniPSF.radial_profile(self, z_um, r_um)
        self._lam = lam
        try:
            return GibsonLanniPSF.radial_profile(self, z_um, r_um)
        finally:
            self._lam = None

    def _pinhole_matrix(self, r_um: torch.Tensor):
        """(s grid (Ns,), M (Ns, Nr)) with (h conv disc)(r) = h(s) @ M (trapezoid weights)."""
        big_r = self.pinhole_radius_um
        lam, na = float(self._pos("wavelength_um").detach()), float(self.na.detach())
        step = lam / (4.0 * na) / 32.0
        rmax = float(r_um.max()) + big_r
        key = (round(rmax, 9), step, big_r, r_um.shape[0], float(r_um.sum()))
        if self._theta_cache is not None and self._theta_cache[0] == key:
            return self._theta_cache[1]
        ns = int(math.ceil(rmax / step)) + 2
        s = torch.arange(ns, dtype=PARAM_DTYPE, device=r_um.device) * step
        r = r_um.to(PARAM_DTYPE)[None, :]
        sc = s[:, None]
        with torch.no_grad():
            cosang = (sc * sc + r * r - big_r * big_r) / (2.0 * sc * r).clamp_min(1e-300)
            theta = 2.0 * torch.arccos(cosang.clamp(-1.0, 1.0))
            inside = sc + r <= big_r  # the whole circle is in the disc
            outside = ~inside & ((sc - r).abs() >= big_r)  # none of it
            theta = torch.where(inside, torch.full_like(theta, 2.0 * math.pi), theta)
            theta = torch.where(outside, torch.zeros_like(theta), theta)
            w = torch.full((ns,), step, dtype=PARAM_DTYPE, device=r_um.device)
            w[0] = w[-1] = 0.5 * step
            mat = (w * s)[:, None] * theta
        self._theta_cache = (key, (s, mat))
        return s, mat

    def radial_profile(self, z_um: torch.Tensor, r_um: torch.Tensor) -> torch.Tensor:
        """Un-normalised confocal intensity h(z, r), (Nz, Nr) float64, differentiable.

        Radii beyond the lateral ``max_extent_um`` get 0 (there the product of two spreading
        widefield PSFs is many orders below the peak), which keeps the pinhole matrix small
        when the OTF's Hankel transform asks for radii across a whole image."""
        cap = max(self.max_extent_um[1:])
        keep = r_um <= cap
        if not bool(keep.all()):
            out = torch.zeros((z_um.shape[0], r_um.shape[0]), dtype=PARAM_DTYPE, device=z_um.device)
            if bool(keep.any()):
                out = out.index_put(
                    (torch.arange(z_um.shape[0], device=z_um.device)[:, None], keep.nonzero()[:, 0][None, :]),
                    self.radial_profile(z_um, r_um[keep]),
                )
            return out
        ex = self._widefield(z_um, r_um, lam=self.ex_wavelength_um)
        s, mat = self._pinhole_matrix(r_um)
        em = self._widefield(z_um, s) @ mat.to(z_um.device)
        return ex * em

    # -- reports -------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d["type"] = "ConfocalPSF"
        d["ex_wavelength_um"] = float(self.ex_wavelength_um.detach())
        d["pinhole_au"] = self.pinhole_au
        if isinstance(self.log_ex_wavelength_um, torch.nn.Parameter):
            d["learn"] = list(d["learn"]) + ["ex_wavelength_um"]
        return d

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> ConfocalPSF:
        kw = {k: v for k, v in d.items() if k != "type"}
        if "max_extent_um" in kw:
            kw["max_extent_um"] = tuple(kw["max_extent_um"])
        return cls(**kw)


# the parameters GibsonLanniPSF's learn= accepts, plus the excitation wavelength
LEARNABLE = tuple(_POSITIVE) + ("particle_depth_um", "ex_wavelength_um")
