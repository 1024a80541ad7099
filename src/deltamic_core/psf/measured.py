"""A PSF measured from a bead image, with its OTF at any grid's frequencies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .._checks import check_spacing
from ..grid import FFTGrid
from ._base import PARAM_DTYPE, PSFModel, _check_dtype, _check_grid


class MeasuredPSF(PSFModel):
    r"""PSF given by samples (a measured bead stack, or any array), not learnable.

    The samples h[a, b, c] (FFT order, index 0 = the PSF centre, spacing s0) are taken as
    the band-limited (sinc) interpolant of the PSF, whose OTF at any frequency k inside the
    sampled band |k_i| < 1 / (2 s0_i) is the discrete-time Fourier transform

        OTF(k) = sum_abc h[a, b, c] exp(-2 pi i (k_z z_a + k_y y_b + k_x x_c)) * s0z s0y s0x

    and 0 outside it. ``otf(grid)`` evaluates this exactly at the grid's frequencies with
    three small separable matrix products, so a renderer grid with another spacing or box
    size needs no real-space resampling (this is Fourier interpolation, done exactly).

    Parameters
    ----------
    psf : (Z, Y, X) array, non-negative, in FFT order (centre at index 0); it is
        normalised to unit integral.
    spacing_um : (z, y, x) voxel size of ``psf`` in um.
    """

    def __init__(self, psf, spacing_um):
        super().__init__()
        arr = _as_volume(psf, "psf")
        if np.any(arr < 0):
            raise ValueError(
                "psf must be non-negative (subtract the background and clip first, or use from_bead_image)"
            )
        self.spacing_um = check_spacing(spacing_um, "spacing_um")
        dv = float(np.prod(self.spacing_um))
        total = float(arr.sum()) * dv
        if not total > 0:
            raise ValueError("psf is zero everywhere: nothing to normalise")
        self.register_buffer("samples", torch.as_tensor(arr / total, dtype=PARAM_DTYPE))

    @property
    def grid(self) -> FFTGrid:
        """The grid of the stored samples."""
        return FFTGrid(tuple(self.samples.shape), self.spacing_um)

    @classmethod
    def from_bead_image(
        cls,
        image,
        spacing_um,
        background=None,
        *,
        snr_threshold: float = 3.0,
        smoothing_voxels: float = 1.0,
        iterations: int = 3,
    ) -> MeasuredPSF:
        """Build a PSF from an image of one sub-resolution bead.

        Steps: (1) background: ``background`` if given (a number), else the median of the
        image border (a shell one tenth of each size thick, at least 2 voxels), with the noise
        level from the border's median absolute deviation; (2) support: voxels where the
        image smoothed by a Gaussian of ``smoothing_voxels`` exceeds ``snr_threshold`` times
        the smoothed noise level, keeping the connected region of the brightest voxel,
        dilated by 2 voxels (outside it the PSF is set to 0, so background noise does not
        pile up in the integral); (3) centre: the intensity centroid over the support is
        moved to the box centre by a Fourier (sub-voxel) shift, recomputing the support and
        centroid ``iterations`` times; (4) clip negatives, normalise to unit integral.

        Parameters
        ----------
        image : (Z, Y, X) array, the bead roughly in the middle (it may be anywhere).
        spacing_um : (z, y, x) voxel size in um.
        background : float or None.

        Returns
        -------
        MeasuredPSF whose samples are in FFT order on the bead image's grid; its
        ``bead_centre_voxels`` attribute is the sub-voxel bead position found in ``image``
        and ``background`` the value subtracted.
        """
        img = _as_volume(image, "image")
        spacing = check_spacing(spacing_um, "spacing_um")
        if not np.all(np.isfinite(img)):
            raise ValueError("image contains NaN or Inf values")
        shell = _border(img)
        if background is None:
            bg = float(np.median(shell))
        else:
            try:
                bg = float(background)
            except (TypeError, ValueError):
                raise TypeError(f"background must be a number or None, got {background!r}") from None
            if not math.isfinite(bg):
                raise ValueError(f"background must be finite, got {bg}")
        data = img - bg
        centre = np.array([n // 2 for n in img.shape], dtype=float)
        shift = np.zeros(3)
        sm0 = ndimage.gaussian_filter(data, smoothing_voxels, mode="wrap")
        noise = 1.4826 * float(np.median(np.abs(_border(sm0) - np.median(_border(sm0)))))
        for _ in range(max(1, int(iterations))):
            shifted = _fourier_shift(data, shift)
            sm = ndimage.gaussian_filter(shifted, smoothing_voxels, mode="wrap")
            peak = np.unravel_index(int(np.argmax(sm)), sm.shape)
            thr = max(snr_threshold * noise, 1e-12 * float(sm.max()))
            if not sm[peak] > thr:
                raise ValueError(
                    "image: no bead above the noise (peak of the smoothed, background-subtracted "
                    f"image {float(sm[peak]):.3g} <= {snr_threshold} x noise {noise:.3g})"
                )
            labels, _ = ndimage.label(sm > thr)
            support = ndimage.binary_dilation(labels == labels[peak], iterations=2)
            w = np.clip(shifted, 0.0, None) * support
            idx = np.indices(w.shape).reshape(3, -1).astype(float)
            com = (idx * w.reshape(1, -1)).sum(axis=1) / w.sum()
            shift = shift + (centre - com)
        psf = np.clip(shifted, 0.0, None) * support
        out = cls(np.fft.ifftshift(psf), spacing)
        # where the bead was found in the input image (voxel units), for reports and QC
        out.bead_centre_voxels = tuple(float(v) for v in centre - shift)
        out.background = bg
        return out

    # -- contract ------------------------------------------------------------------------
    def otf(self, grid: FFTGrid, dtype=torch.float32, device=None) -> torch.Tensor:
        """OTF at ``grid``'s rfft frequencies (complex), by the exact DTFT of the samples;
        0 at frequencies beyond the samples' Nyquist band."""
        grid = _check_grid(grid)
        _check_dtype(dtype)
        dev = self._device(device)
        h = self.samples.to(dev).to(torch.complex128)
        coords = FFTGrid(tuple(self.samples.shape), self.spacing_um).centred_coords(PARAM_DTYPE, dev)
        fz, fy, fx = grid.freqs(PARAM_DTYPE, dev)
        cz, cy, cx = coords
        sz, sy, sx = self.spacing_um

        def kernel(f, c, s):
            k = torch.exp(-2j * math.pi * c[:, None] * f[None, :])  # (N0, Nk)
            inband = (f.abs() <= 0.5 / s * (1.0 + 1e-9)).to(k.dtype)
            return k * inband[None, :]

        # contract x, then y, then z: (Z0,Y0,X0) -> (Z0,Y0,Xk) -> (Z0,Yk,Xk) -> (Zk,Yk,Xk)
        out = torch.einsum("abc,cx->abx", h, kernel(fx, cx, sx))
        out = torch.einsum("abx,by->ayx", out, kernel(fy, cy, sy))
        out = torch.einsum("ayx,az->zyx", out, kernel(fz, cz, sz))
        out = out * (sz * sy * sx)
        return out.to(dtype.to_complex())

    def extent_um(self) -> tuple[float, float, float]:
        """Half-widths of the stored samples' support (where they are > 0), plus one voxel."""
        h = self.samples.detach().cpu().numpy()
        coords = [c.numpy() for c in self.grid.centred_coords()]
        nz = np.nonzero(h > 0)
        return tuple(float(np.abs(c[i]).max() + s) for c, i, s in zip(coords, nz, self.spacing_um))

    # -- reports -------------------------------------------------------------------------
    def as_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """Summary for reports (spacing, shape, FWHM, centroid); with ``include_samples`` also
        the samples themselves (nested lists), so that ``from_dict`` can rebuild the model.
        The samples are left out by default because reports are written every iteration."""
        d: dict[str, Any] = {
            "type": "MeasuredPSF",
            "spacing_um": list(self.spacing_um),
            "shape": list(self.samples.shape),
            "fwhm_um": list(self.fwhm_um()),
            "centroid_um": list(self.centroid_um()),
        }
        if include_samples:
            d["samples"] = self.samples.detach().cpu().numpy().tolist()
        return d

    def describe(self) -> str:
        c = self.centroid_um()
        return (
            f"MeasuredPSF(shape={tuple(self.samples.shape)}, spacing_um={tuple(round(s, 4) for s in self.spacing_um)}, "
            f"fwhm_um~{tuple(round(v, 3) for v in self.fwhm_um())}, centroid_um={tuple(round(v, 4) for v in c)})"
        )

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> MeasuredPSF:
        if "samples" not in d:
            raise ValueError("d has no 'samples': write it with as_dict(include_samples=True) to rebuild a MeasuredPSF")
        return cls(np.asarray(d["samples"], dtype=float), d["spacing_um"])

    # -- diagnostics ---------------------------------------------------------------------
    def centroid_um(self) -> tuple[float, float, float]:
        """Intensity centroid (z, y, x) in um of the stored samples (FFT-order coordinates)."""
        h = self.samples.detach().cpu()
        cz, cy, cx = self.grid.centred_coords()
        tot = h.sum()
        return (
            float((h.sum((1, 2)) * cz).sum() / tot),
            float((h.sum((0, 2)) * cy).sum() / tot),
            float((h.sum((0, 1)) * cx).sum() / tot),
        )

    def fwhm_um(self) -> tuple[float, float, float]:
        """Full width at half maximum along each axis through the brightest voxel (linear
        interpolation between samples)."""
        h = np.fft.fftshift(self.samples.detach().cpu().numpy())
        p = np.unravel_index(int(np.argmax(h)), h.shape)
        out = []
        for axis, s in enumerate(self.spacing_um):
            line = np.moveaxis(h, axis, 0)[(slice(None),) + tuple(q for a, q in enumerate(p) if a != axis)]
            half = line.max() / 2.0
            i0 = int(np.argmax(line))
            lo = i0
            while lo > 0 and line[lo - 1] > half:
                lo -= 1
            hi = i0
            while hi < len(line) - 1 and line[hi + 1] > half:
                hi += 1
            left = lo - (line[lo] - half) / (line[lo] - line[lo - 1]) if lo > 0 else lo
            right = hi + (line[hi] - half) / (line[hi] - line[hi + 1]) if hi < len(line) - 1 else hi
            out.append(float((right - left) * s))
        return tuple(out)


def _as_volume(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric (Z, Y, X) array, got {type(x).__name__}") from None
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D (Z, Y, X) array, got {arr.ndim} dimensions {arr.shape}")
    if min(arr.shape) < 3:
        raise ValueError(f"{name} must have at least 3 voxels along each axis, got shape {arr.shape}")
    return arr


def _border(img: np.ndarray) -> np.ndarray:
    """Voxels in a shell one tenth of each size thick (at least 2 voxels, at most half)."""
    mask = np.zeros(img.shape, dtype=bool)
    for axis, n in enumerate(img.shape):
        t = min(max(2, n // 10), max(1, n // 2 - 1))
        sl = [slice(None)] * 3
        sl[axis] = slice(0, t)
        mask[tuple(sl)] = True
        sl[axis] = slice(n - t, n)
        mask[tuple(sl)] = True
    return img[mask]


def _fourier_shift(data: np.ndarray, shift) -> np.ndarray:
    """Translate ``data`` by ``shift`` voxels (periodic, band-limited interpolation)."""
    if not np.any(shift):
        return data
    spec = np.fft.rfftn(data)
    spec = ndimage.fourier_shift(spec, shift, n=data.shape[-1])
    return np.fft.irfftn(spec, s=data.shape, axes=(0, 1, 2))
