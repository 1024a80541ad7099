"""Geometry of a render plan: the padded FFT box around the requested image, the crop that
recovers the image from it, the narrow band of significant OTF frequencies, and the region a
mesh may occupy without its blurred image wrapping around the periodic box.

Everything here is set up once per fit; none of it runs per iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.fft import next_fast_len

from .._checks import check_shape, check_spacing, check_vector3
from ..grid import FFTGrid, GridBand


def fast_length(n: int, *, even: bool = False) -> int:
    """Smallest 5-smooth length >= ``n`` (fast for every FFT library), optionally even.

    An even last axis keeps the rfft half spectrum a clean n // 2 + 1 with a real Nyquist plane.
    """
    m = next_fast_len(int(n), real=True)
    while even and m % 2:
        m = next_fast_len(m + 1, real=True)
    return int(m)


@dataclass(frozen=True)
class PaddedBox:
    """The image box and the periodic FFT box that contains it.

    Attributes
    ----------
    image : FFTGrid
        The requested image: ``shape`` voxels, voxel (0, 0, 0) centred at ``origin_um``.
    grid : FFTGrid
        The padded FFT box on the same voxel lattice; ``grid.origin_um`` is the centre of its
        voxel (0, 0, 0), so the image is ``padded[lo[0]:lo[0]+Z, lo[1]:lo[1]+Y, lo[2]:lo[2]+X]``.
    lo : tuple of int
        Number of padding voxels before the image on each axis (z, y, x).
    blur_um : tuple of float
        Half-width (z, y, x) of the PSF support the padding must absorb (the PSF's
        ``extent_um()``), used to decide where a mesh can lie without wrapping.
    """

    image: FFTGrid
    grid: FFTGrid
    lo: tuple[int, int, int]
    blur_um: tuple[float, float, float]

    @property
    def crop(self) -> tuple[slice, slice, slice]:
        return tuple(slice(l, l + n) for l, n in zip(self.lo, self.image.shape))

    def wrap_free_bounds(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Open interval (lower, upper) per axis, in um, inside which every point of the object
        must lie so that no periodic copy of its blurred image reaches a cropped voxel.

        A point y contributes to voxel x through its copies y + j L (L = padded box length,
        j != 0) only if |x - y - j L| < blur. Requiring that for every image voxel x gives
        y in (x_last + blur - L, x_first - blur + L).
        """
        lower, upper = [], []
        for o, s, n, L, b in zip(
            self.image.origin_um, self.image.spacing_um, self.image.shape, self.grid.extent_um, self.blur_um
        ):
            first, last = o, o + (n - 1) * s
            lower.append(last + b - L)
            upper.append(first - b + L)
        return tuple(lower), tuple(upper)


def padded_box(shape, spacing_um, origin_um, blur_um, margin_um=None) -> PaddedBox:
    """Grow the image box by ``blur_um`` (+ ``margin_um``) on every side, round each axis up to
    an FFT-friendly length (x even, for the half spectrum) and keep the image voxel lattice.

    Parameters
    ----------
    shape : (3,) int
        Image shape (Z, Y, X).
    spacing_um : (3,) float
        Voxel size (z, y, x) in micrometres.
    origin_um : (3,) float
        Centre of image voxel (0, 0, 0) in micrometres.
    blur_um : (3,) float
        PSF half-extent (z, y, x) in micrometres (non-negative).
    margin_um : (3,) float or float, optional
        Extra padding (z, y, x) in micrometres beyond the PSF half-extent, e.g. so that a mesh
        may stick out of the image further before it wraps around.
    """
    shape = check_shape(shape, "shape")
    spacing = check_spacing(spacing_um, "spacing_um")
    origin = check_vector3(origin_um, "origin_um")
    blur = check_vector3(blur_um, "psf.extent_um()")
    if any(b < 0 for b in blur):
        raise ValueError(f"psf.extent_um() must be non-negative, got {blur}")
    margin = (0.0, 0.0, 0.0) if margin_um is None else check_vector3(margin_um, "margin_um")
    if any(m < 0 for m in margin):
        raise ValueError(f"margin_um must be non-negative, got {margin}")
    lo, sizes = [], []
    for axis, (n, s, b, m) in enumerate(zip(shape, spacing, blur, margin)):
        pad = int(math.ceil((b + m) / s - 1e-9))
        total = fast_length(n + 2 * pad, even=(axis == 2))
        lo.append(pad)
        sizes.append(total)
    padded_origin = tuple(o - l * s for o, l, s in zip(origin, lo, spacing))
    return PaddedBox(
        image=FFTGrid(shape, spacing, origin),
        grid=FFTGrid(tuple(sizes), spacing, padded_origin),
        lo=tuple(lo),
        blur_um=blur,
    )


def check_band_threshold(threshold, name: str = "band_threshold") -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {threshold!r}") from None
    if not math.isfinite(t) or t < 0 or t >= 1:
        raise ValueError(
            f"{name} must be in [0, 1) (relative to max|OTF|; e.g. 1e-3), got {threshold!r}: "
            "a threshold >= 1 keeps no frequency"
        )
    return t


def band_from_otf(grid: FFTGrid, otf: torch.Tensor, threshold: float) -> GridBand:
    """The rfft positions where |OTF| > threshold * max|OTF| (relative threshold)."""
    mag = otf.detach().abs()
    peak = float(mag.max())
    if not math.isfinite(peak) or peak <= 0:
        raise ValueError(f"the PSF's OTF has no usable maximum (max|OTF| = {peak}): check the PSF parameters")
    mask = mag > threshold * peak
    if not bool(mask.any()):
        raise ValueError(f"band_threshold={threshold} keeps no frequency of the OTF: lower the threshold")
    return GridBand.from_mask(grid, mask)


def oversampled_grid(grid: FFTGrid, factor) -> FFTGrid:
    """The grid with the same box (lengths L, origin) and ``factor`` times more voxels per
    axis: its frequencies j / L extend ``factor`` times beyond ``grid``'s Nyquist frequency."""
    q = tuple(int(f) for f in factor)
    return FFTGrid(
        tuple(n * f for n, f in zip(grid.shape, q)), tuple(s / f for s, f in zip(grid.spacing_um, q)), grid.origin_um
    )


def boundary_otf(otf: torch.Tensor) -> tuple[float, float, float]:
    """max |OTF| on the highest frequency of each axis of an rfft half spectrum, relative to
    max |OTF|: (z, y, x)."""
    mag = otf.detach().abs()
    peak = float(mag.max())
    nz, ny, _ = mag.shape
    edges = (mag[nz // 2].max(), mag[:, ny // 2].max(), mag[:, :, -1].max())
    return tuple(float(e) / peak if peak > 0 else float("nan") for e in edges)


def nyquist_otf(otf: torch.Tensor) -> float:
    """Largest |OTF| on the highest sampled frequency of any axis, relative to max|OTF|.

    Large values mean the PSF is undersampled by the voxel grid.
    """
    return max(boundary_otf(otf))


@dataclass(frozen=True, eq=False)
class AliasFold:
    """Where each band frequency lands in the image grid's half spectrum.

    Point samples of a continuous image at the voxel centres see every frequency k + j / s
    (j integer) at the image-grid frequency k: the half-spectrum coefficient of bin b is the sum
    of the continuous spectrum over all frequencies m / L with m = b (mod N). A band frequency
    m (on the half spectrum of a finer grid of the same box, m_x >= 0) therefore adds its
    coefficient to bin ``m mod N`` when that bin lies in the image grid's half spectrum
    (``direct``), and, the image being real, the conjugate coefficient (the value at -m) to bin
    ``-m mod N`` when that one does (``mirror``; only for m_x > 0, since m_x = 0 frequencies
    come in +/- pairs within the band already).

    direct_sel, mirror_sel : (Kd,), (Km,) int64 positions in the band
    direct_bin, mirror_bin : (Kd,), (Km,) int64 flat indices into the image grid's rfft shape
    """

    direct_sel: torch.Tensor
    direct_bin: torch.Tensor
    mirror_sel: torch.Tensor
    mirror_bin: torch.Tensor

    def to(self, device) -> AliasFold:
        return AliasFold(*(t.to(device) for t in (self.direct_sel, self.direct_bin, self.mirror_sel, self.mirror_bin)))


def alias_fold(band: GridBand, grid: FFTGrid, *, mirror: bool = True) -> AliasFold:
    """Targets of ``band`` (on a grid with the same box as ``grid``) in ``grid``'s half spectrum.

    With ``mirror=False`` (no folding: the band lies on ``grid`` itself) every band entry maps
    to its own bin.
    """
    n = torch.tensor(grid.shape, dtype=torch.int64)
    nz, ny, nxh = grid.rfft_shape
    m = band.signed_modes()

    def bins(modes):
        b = torch.remainder(modes, n)
        return b, (b[:, 0] * ny + b[:, 1]) * nxh + b[:, 2]

    b, flat = bins(m)
    direct = torch.nonzero(b[:, 2] < nxh).reshape(-1)
    if not mirror:
        empty = torch.zeros(0, dtype=torch.int64)
        return AliasFold(direct, flat[direct], empty, empty)
    bm, flat_m = bins(-m)
    mir = torch.nonzero((bm[:, 2] < nxh) & (m[:, 2] > 0)).reshape(-1)
    return AliasFold(direct, flat[direct], mir, flat_m[mir])
