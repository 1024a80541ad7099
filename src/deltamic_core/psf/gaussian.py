"""Anisotropic (optionally rotated) 3D Gaussian PSF with an analytic OTF."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..grid import FFTGrid
from ._base import PARAM_DTYPE, PSFModel, _check_dtype, _check_grid, _positive


class GaussianPSF(PSFModel):
    r"""3D Gaussian PSF, axis-aligned or with a full covariance matrix.

    h(x) = (2 pi)^{-3/2} det(Sigma)^{-1/2} exp(-x^T Sigma^{-1} x / 2)   [1/um^3]
    OTF(k) = exp(-2 pi^2 k^T Sigma k)                                    (k in cycles/um)

    Sigma = L L^T is parametrised by its Cholesky factor L (lower triangular) with the log of
    its diagonal stored, so Sigma stays symmetric positive definite under any gradient step.
    Without ``covariance_um2`` only the diagonal is learnable (the PSF stays axis aligned and
    L = diag(sigma)); with it the three off-diagonal entries of L are learnable too.

    Parameters
    ----------
    sigma_um : float or 3 floats (z, y, x)
        Standard deviations in micrometres (a scalar means isotropic). Ignored when a
        covariance is given.
    covariance_um2 : (3, 3) array-like, optional
        Full covariance in um^2, (z, y, x) order; must be symmetric positive definite.
        ``covariance`` is accepted as an alias (the name used in DEVELOPERS.md).
    extent_sigmas : float
        ``extent_um()`` returns this many marginal standard deviations per axis
        (4 sigma: the PSF there is exp(-8) ~ 3e-4 of its peak).
    """

    def __init__(self, sigma_um=(1.0, 0.25, 0.25), covariance_um2=None, *, covariance=None, extent_sigmas: float = 4.0):
        super().__init__()
        if covariance is not None and covariance_um2 is not None:
            raise ValueError("give covariance_um2 or its alias covariance, not both")
        if covariance_um2 is None:
            covariance_um2 = covariance
        self.extent_sigmas = _positive(extent_sigmas, "extent_sigmas")
        if covariance_um2 is None:
            sig = _check_sigma(sigma_um)
            self.log_diag = nn.Parameter(torch.log(torch.tensor(sig, dtype=PARAM_DTYPE)))
            self.register_buffer("offdiag", torch.zeros(3, dtype=PARAM_DTYPE))
            self._full = False
        else:
            chol = _check_covariance(covariance_um2)
            self.log_diag = nn.Parameter(torch.log(torch.diagonal(chol).clone()))
            self.offdiag = nn.Parameter(chol[[1, 2, 2], [0, 0, 1]].clone())
            self._full = True

    # -- physical parameters -------------------------------------------------------------
    @property
    def cholesky_factor(self) -> torch.Tensor:
        """(3, 3) lower-triangular L with Sigma = L L^T (um)."""
        d = torch.exp(self.log_diag)
        z = torch.zeros((), dtype=d.dtype, device=d.device)
        o = self.offdiag
        return torch.stack(
            [
                torch.stack([d[0], z, z]),
                torch.stack([o[0], d[1], z]),
                torch.stack([o[1], o[2], d[2]]),
            ]
        )

    @property
    def covariance_um2(self) -> torch.Tensor:
        """(3, 3) covariance Sigma in um^2, (z, y, x) order (differentiable)."""
        chol = self.cholesky_factor
        return chol @ chol.T

    @property
    def sigma_um(self) -> torch.Tensor:
        """(3,) marginal standard deviations (z, y, x) in um (differentiable)."""
        if not self._full:
            return torch.exp(self.log_diag)
        return torch.sqrt(torch.diagonal(self.covariance_um2))

    @property
    def is_full_covariance(self) -> bool:
        return self._full

    # -- contract ------------------------------------------------------------------------
    def otf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        """Analytic OTF exp(-2 pi^2 k^T Sigma k) on ``grid.rfft_shape`` (real tensor)."""
        grid = _check_grid(grid)
        _check_dtype(dtype)
        dev = self._device(device)
        fz, fy, fx = grid.freq_grid(dtype=PARAM_DTYPE, device=dev)
        c = -2.0 * math.pi**2
        if not self._full:
            s2 = torch.exp(2.0 * self.log_diag).to(dev)
            # separable: three 1D exponentials, one broadcast product
            out = torch.exp(c * s2[0] * fz**2) * torch.exp(c * s2[1] * fy**2) * torch.exp(c * s2[2] * fx**2)
        else:
            S = self.covariance_um2.to(dev)
            q = (
                S[0, 0] * fz**2
                + S[1, 1] * fy**2
                + S[2, 2] * fx**2
                + 2.0 * (S[0, 1] * fz * fy + S[0, 2] * fz * fx + S[1, 2] * fy * fx)
            )
            out = torch.exp(c * q)
        return out.to(dtype)

    def psf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        """Analytic Gaussian density (1/um^3) at the FFT-order coordinates of ``grid``.

        Not periodised: on a box smaller than ~``2 * extent_um()`` the wrapped tails are
        missing (the OTF is the exact transform of the free-space PSF regardless)."""
        grid = _check_grid(grid)
        _check_dtype(dtype)
        dev = self._device(device)
        z, y, x = grid.centred_coords(dtype=PARAM_DTYPE, device=dev)
        z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
        S = self.covariance_um2.to(dev)
        P = torch.linalg.inv(S)
        q = (
            P[0, 0] * z**2
            + P[1, 1] * y**2
            + P[2, 2] * x**2
            + 2.0 * (P[0, 1] * z * y + P[0, 2] * z * x + P[1, 2] * y * x)
        )
        norm = (2.0 * math.pi) ** 1.5 * torch.sqrt(torch.linalg.det(S))
        return (torch.exp(-0.5 * q) / norm).to(dtype)

    def extent_um(self) -> tuple[float, float, float]:
        s = self.sigma_um.detach().cpu().numpy()
        return tuple(float(self.extent_sigmas * v) for v in s)

    # -- construction helpers ------------------------------------------------------------
    @classmethod
    def from_optics(
        cls,
        na: float,
        wavelength_um: float,
        n_immersion: float,
        confocal: bool = False,
        excitation_wavelength_um: float | None = None,
        **kwargs,
    ) -> GaussianPSF:
        r"""Gaussian matched to the peak of the paraxial, aberration-free widefield PSF.

        With k = 2 pi / lambda (emission wavelength, vacuum), the paraxial widefield PSF is
        [2 J1(v)/v]^2 laterally (v = k NA r) and sinc^2(u/4) axially (u = k NA^2 z / n).
        Matching the second derivative at the peak (the paraxial 3D widefield entry in
        B. Zhang, J. Zerubia, J.-C. Olivo-Marin, "Gaussian approximations of fluorescence
        microscope point-spread function models", Appl. Opt. 46(10):1819-1829, 2007) gives

            sigma_xy = sqrt(2) / (k NA)       ~ 0.225 lambda / NA
            sigma_z  = 2 sqrt(6) n / (k NA^2) ~ 0.780 n lambda / NA^2

        ``confocal=True`` models a confocal microscope with a pinhole much smaller than an
        Airy unit, whose PSF is the product of the excitation and emission PSFs; for Gaussians
        1/sigma^2 = 1/sigma_ex^2 + 1/sigma_em^2 (sigma / sqrt(2) when both wavelengths are
        equal). The excitation wavelength defaults to the emission wavelength.

        These are paraxial formulas: at high NA they are only indicative (Zhang et al. also
        give non-paraxial fits); use :class:`GibsonLanniPSF` or :class:`HanserPSF`, or fit the
        widths, when the PSF shape matters.
        """
        na = _positive(na, "na")
        lam = _positive(wavelength_um, "wavelength_um")
        n = _positive(n_immersion, "n_immersion")
        if na >= n:
            raise ValueError(f"na must be smaller than n_immersion (na={na}, n_immersion={n})")

        def widths(lam_):
            k = 2.0 * math.pi / lam_
            return math.sqrt(6.0) * 2.0 * n / (k * na**2), math.sqrt(2.0) / (k * na)

        sz, sxy = widths(lam)
        if confocal:
            lam_ex = (
                lam
                if excitation_wavelength_um is None
                else _positive(excitation_wavelength_um, "excitation_wavelength_um")
            )
            ez, exy = widths(lam_ex)
            sz = 1.0 / math.sqrt(1.0 / sz**2 + 1.0 / ez**2)
            sxy = 1.0 / math.sqrt(1.0 / sxy**2 + 1.0 / exy**2)
        elif excitation_wavelength_um is not None:
            raise ValueError("excitation_wavelength_um only applies with confocal=True")
        return cls(sigma_um=(sz, sxy, sxy), **kwargs)

    # -- reports -------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "GaussianPSF", "sigma_um": [float(v) for v in self.sigma_um.detach().cpu()]}
        if self._full:
            d["covariance_um2"] = self.covariance_um2.detach().cpu().tolist()
        d["extent_sigmas"] = self.extent_sigmas
        return d

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> GaussianPSF:
        return cls(
            sigma_um=d.get("sigma_um", (1.0, 0.25, 0.25)),
            covariance_um2=d.get("covariance_um2"),
            extent_sigmas=d.get("extent_sigmas", 4.0),
        )


def _check_sigma(sigma_um) -> tuple[float, float, float]:
    try:
        arr = np.asarray(sigma_um, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"sigma_um must be a number or three numbers (z, y, x) in um, got {sigma_um!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise ValueError(f"sigma_um must have 1 or 3 values (z, y, x), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"sigma_um must be positive and finite, got {tuple(arr.tolist())}")
    return tuple(float(a) for a in arr)


def _check_covariance(cov) -> torch.Tensor:
    try:
        c = torch.as_tensor(np.asarray(cov, dtype=float), dtype=PARAM_DTYPE)
    except (TypeError, ValueError):
        raise TypeError(f"covariance_um2 must be a (3, 3) array of numbers, got {cov!r}") from None
    if tuple(c.shape) != (3, 3):
        raise ValueError(f"covariance_um2 must have shape (3, 3), got {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ValueError("covariance_um2 contains NaN or Inf")
    if not torch.allclose(c, c.T, rtol=1e-10, atol=1e-12 * float(c.abs().max())):
        raise ValueError("covariance_um2 must be symmetric")
    chol, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        raise ValueError("covariance_um2 must be positive definite (its Cholesky factorisation failed)")
    return chol
