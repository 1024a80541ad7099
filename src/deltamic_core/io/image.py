"""Reading and writing 3D (and 3D + time) fluorescence stacks as TIFF files.

Images come back as float32 arrays in (Z, Y, X) or (T, Z, Y, X) order with their voxel size in
micrometres. The voxel size is taken, in order of precedence, from the ``spacing_um`` argument,
the file's metadata (ImageJ hyperstack or OME-XML), or else 1 um per axis; which one was used is
recorded in :attr:`ImageMeta.spacing_source` so callers can warn about the default.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._checks import check_spacing
from ._atomic import atomic_write

__all__ = ["ImageMeta", "read_image", "write_tiff", "unit_to_um", "SpacingWarning", "InvalidSpacingError"]

# Conversion factors to micrometres for the length units found in ImageJ and OME metadata.
_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometers": 1.0,
    "micrometre": 1.0,
    "micrometres": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometers": 1e-3,
    "nanometre": 1e-3,
    "nanometres": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimeters": 1e3,
    "millimetre": 1e3,
    "millimetres": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "meters": 1e6,
    "metre": 1e6,
    "metres": 1e6,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
}
# Units that mean "no physical calibration" (ImageJ writes 'pixel' for uncalibrated images).
_NO_UNIT = {"", "pixel", "pixels", "px", "none", "unit", "units"}

# tifffile axis codes for a plain stack of 2D pages whose meaning is unknown.
_GENERIC_STACK_AXES = "IQ"


def unit_to_um(unit: str | None) -> float | None:
    """Micrometres per ``unit`` (``'nm'`` -> 1e-3, ``'micron'`` -> 1), or None if uncalibrated.

    Raises
    ------
    ValueError
        If the unit is not a length unit this module knows.
    """
    if unit is None:
        return None
    key = str(unit).strip()
    key = key.replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("\\u03bc", "μ").replace("\\u03BC", "μ")
    key = key.lower()
    if key in _NO_UNIT:
        return None
    if key in _UNIT_TO_UM:
        return _UNIT_TO_UM[key]
    raise ValueError(f"unknown length unit {unit!r}: expected one of um, micron, µm, nm, mm, cm, m")


@dataclass(frozen=True)
class ImageMeta:
    """What :func:`read_image` found out about an image.

    Attributes
    ----------
    spacing_um : tuple of 3 floats
        Voxel size (z, y, x) in micrometres (always micrometres, whatever the file's unit).
    unit : str
        The length unit the file declared ('um', 'nm', ...; normalised), or 'pixel' when the
        file carried no calibration.
    axes : str
        Axes of the returned array: 'ZYX' or 'TZYX'.
    spacing_source : str
        'override' (the ``spacing_um`` argument), 'metadata' (every axis read from the file),
        'default' (nothing found: 1 um per axis assumed) or 'partial' (some axes from the file,
        the others assumed: see ``spacing_sources``).
    spacing_sources : tuple of 3 str
        Per axis (z, y, x): 'override', 'metadata' or 'default' (assumed).
    shape : tuple of int
        Shape of the returned array.
    source_axes : str
        Axes of the series in the file as tifffile reports them (e.g. 'TZCYX').
    channel : int or None
        Index of the selected channel, None when the file had a single channel.
    channel_names : tuple of str
        Names of all channels in the file ('0', '1', ... when the file names none).
    path : str
        The file that was read.
    dtype : str
        The pixel type stored in the file (the returned array is always float32).
    """

    spacing_um: tuple[float, float, float]
    unit: str
    axes: str
    spacing_source: str
    shape: tuple[int, ...]
    source_axes: str = ""
    channel: int | None = None
    channel_names: tuple[str, ...] = ()
    path: str = ""
    dtype: str = ""
    spacing_sources: tuple[str, str, str] = ("default", "default", "default")

    @property
    def assumed_axes(self) -> tuple[str, ...]:
        """Axes ('z', 'y', 'x') whose voxel size was assumed (neither in the file nor given)."""
        return tuple(a for a, s in zip("zyx", self.spacing_sources) if s == "default")


# --------------------------------------------------------------------------------------------
# metadata parsing
# --------------------------------------------------------------------------------------------


def _resolution_to_size(tag_value) -> float | None:
    """TIFF X/YResolution is pixels per unit as a rational; return unit per pixel."""
    try:
        num, den = tag_value
        num, den = float(num), float(den)
    except (TypeError, ValueError):
        return None
    if num <= 0 or den <= 0:
        return None
    return den / num


def _imagej_spacing(tf) -> tuple[tuple | None, str, tuple[str, str, str]]:
    """Spacing (z, y, x) in um, normalised unit and per-axis source from ImageJ metadata.

    Per-axis sources are 'metadata' or 'default'. ImageJ itself assumes a voxel depth of 1 (in
    the image's unit) when 'spacing' is absent; we use the same number (so both programs agree)
    but report z as 'default'. A 'spacing' of 0, negative or not a number is an error: the file
    says something wrong, not nothing.
    """
    md = tf.imagej_metadata or {}
    unit = md.get("unit")
    factor = unit_to_um(unit) if unit is not None else None
    if factor is None:
        return None, "pixel", ("default",) * 3
    page = tf.pages[0]
    tags = page.tags
    sx = _resolution_to_size(tags["XResolution"].value) if "XResolution" in tags else None
    sy = _resolution_to_size(tags["YResolution"].value) if "YResolution" in tags else None
    if sx is None and sy is None:
        return None, _canonical_unit(unit), ("default",) * 3
    sx = sx if sx is not None else sy
    sy = sy if sy is not None else sx
    if "spacing" in md:
        try:
            sz = float(md["spacing"])
        except (TypeError, ValueError):
            sz = float("nan")
        if not (sz > 0 and np.isfinite(sz)):
            raise InvalidSpacingError(
                f"the ImageJ metadata give a z step (spacing) of {md['spacing']!r}, which is not a positive voxel size"
            )
        z_source = "metadata"
    else:
        sz, z_source = 1.0, "default"
    return (sz * factor, sy * factor, sx * factor), _canonical_unit(unit), (z_source, "metadata", "metadata")


class _TooLarge(ValueError):
    pass


class InvalidSpacingError(ValueError):
    """The file's metadata state a voxel size that is 0, negative or not a number."""


class SpacingWarning(UserWarning):
    """Some axis of an image's voxel size was not in its metadata and was assumed."""


def _canonical_unit(unit: str | None) -> str:
    factor = unit_to_um(unit)
    if factor is None:
        return "pixel"
    for name, f in (("um", 1.0), ("nm", 1e-3), ("mm", 1e3), ("cm", 1e4), ("m", 1e6), ("pm", 1e-6)):
        if f == factor:
            return name
    return str(unit)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_info(tf) -> tuple[tuple[float | None, float | None, float | None], str, list[str]]:
    """(sz, sy, sx) in um (None where absent), unit of x, channel names of the first image."""
    xml = tf.ome_metadata
    if not xml:
        return (None, None, None), "pixel", []
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return (None, None, None), "pixel", []
    pixels = next((el for el in root.iter() if _local(el.tag) == "Pixels"), None)
    if pixels is None:
        return (None, None, None), "pixel", []
    sizes = []
    unit_x = "pixel"
    for ax in ("Z", "Y", "X"):
        value = pixels.get(f"PhysicalSize{ax}")
        # OME's default unit for physical sizes is the micrometre.
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
        if value is None:
            sizes.append(None)
            continue
        try:
            factor = unit_to_um(unit)
            size = float(value) * factor if factor is not None else None
        except ValueError:
            size = None
        if size is not None and not (size > 0 and np.isfinite(size)):
            raise InvalidSpacingError(
                f"the OME metadata give PhysicalSize{ax}={value!r}, which is not a positive voxel size"
            )
        sizes.append(size)
        if ax == "X" and size is not None:
            unit_x = _canonical_unit(unit)
    names = [ch.get("Name") or str(i) for i, ch in enumerate(el for el in pixels if _local(el.tag) == "Channel")]
    return tuple(sizes), unit_x, names


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _select_channel(data: np.ndarray, axes: str, channel, names: list[str], path: str):
    """Remove the channel axis ('C', or 'S' samples such as RGB) by picking ``channel``."""
    chan_axes = [i for i, a in enumerate(axes) if a in "CS" and data.shape[i] > 1]
    if len(chan_axes) > 1:
        raise ValueError(
            f"{path}: image has several channel-like axes ({axes}, shape {data.shape}); "
            "split the channels into separate files first"
        )
    if not chan_axes:
        if channel not in (None, 0, "0") and not (names and channel in names[:1]):
            raise ValueError(f"channel={channel!r} requested but {path} has a single channel (axes {axes})")
        keep = [i for i, a in enumerate(axes) if a not in "CS"]
        data = data.reshape([data.shape[i] for i in keep])
        return data, "".join(axes[i] for i in keep), None, tuple(names[:1]) if names else ("0",)
    ax = chan_axes[0]
    n = data.shape[ax]
    if len(names) != n:
        names = [str(i) for i in range(n)]
    listing = ", ".join(f"{i}: {nm!r}" for i, nm in enumerate(names))
    if channel is None:
        raise ValueError(
            f"{path} has {n} channels ({listing}): pass channel=<index or name> to pick the membrane channel"
        )
    if isinstance(channel, str) and not channel.lstrip("-").isdigit():
        if channel not in names:
            raise ValueError(f"channel={channel!r} not found in {path}; available channels: {listing}")
        index = names.index(channel)
    else:
        try:
            index = int(channel)
        except (TypeError, ValueError):
            raise TypeError(f"channel must be an int index or a channel name, got {channel!r}") from None
        if not -n <= index < n:
            raise ValueError(f"channel={channel!r} out of range for {path}; available channels: {listing}")
        index %= n
    data = np.take(data, index, axis=ax)
    return data, axes[:ax] + axes[ax + 1 :], index, tuple(names)


def read_image(path, channel=None, spacing_um=None) -> tuple[np.ndarray, ImageMeta]:
    """Read a 3D (Z, Y, X) or 3D + time (T, Z, Y, X) TIFF stack as float32.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file: ImageJ hyperstack (axes TZCYX), OME-TIFF, or a plain multi-page TIFF (pages
        taken as z slices).
    channel : int or str, optional
        Channel to keep when the file has several (index, or OME channel name). Required then:
        the error lists the available channels.
    spacing_um : float or sequence of 3 floats, optional
        Voxel size (z, y, x) in micrometres, overriding the file's metadata.

    Returns
    -------
    image : np.ndarray, float32, shape (Z, Y, X) or (T, Z, Y, X)
    meta : ImageMeta
        Spacing in um (z, y, x), its source, the axes of ``image`` and more.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a readable TIFF, is 2D, has axes other than T, Z, C, Y, X, an
        ambiguous channel, or contains NaN/Inf values.
    """
    import tifffile

    path = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    override = check_spacing(spacing_um, "spacing_um") if spacing_um is not None else None
    import logging
    import warnings

    tiff_log = logging.getLogger("tifffile")
    log_was_disabled = tiff_log.disabled
    tiff_log.disabled = True  # tifffile logs damaged files itself; the error below says it once
    invalid = None
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axes = series.axes.upper()
            n_bytes = float(np.prod([int(n) for n in series.shape], dtype=float)) * np.dtype(series.dtype).itemsize
            if n_bytes > 2**20 and n_bytes > 1.2 * os.path.getsize(path) * 64:
                # a header announcing far more pixels than the file can hold (damaged, or a
                # compressed stack of absurd size): refuse before allocating it
                from .._checks import check_memory

                try:
                    check_memory(n_bytes * 5, f"reading {path} (shape {tuple(series.shape)})")
                except ValueError as exc:
                    raise _TooLarge(str(exc).split(": use")[0]) from None
            data = series.asarray()
            dtype = str(data.dtype)
            spacing, unit = None, "pixel"
            sources = ("default",) * 3
            names: list[str] = []
            try:
                if tf.is_ome:
                    (sz, sy, sx), unit, names = _ome_info(tf)
                    if sx is not None or sy is not None:
                        sources = tuple("metadata" if v is not None else "default" for v in (sz, sy, sx))
                        sx = sx if sx is not None else sy
                        sy = sy if sy is not None else sx
                        sources = (sources[0], "metadata", "metadata")
                        spacing = (sz if sz is not None else 1.0, sy, sx)
                elif tf.is_imagej:
                    spacing, unit, sources = _imagej_spacing(tf)
            except InvalidSpacingError as exc:
                invalid = exc
    except MemoryError:
        raise ValueError(f"{path}: the image does not fit in memory") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can make tifffile fail in many ways
        if isinstance(exc, ValueError) and str(exc).startswith("unknown length unit"):
            raise ValueError(f"{path}: {exc}") from None
        if isinstance(exc, _TooLarge):
            raise ValueError(str(exc)) from None
        msg = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path}: not a readable TIFF image ({type(exc).__name__}: {msg})") from None
    finally:
        tiff_log.disabled = log_was_disabled

    if override is not None:
        spacing, source, sources = override, "override", ("override",) * 3
    elif invalid is not None:
        raise ValueError(f"{path}: {invalid}; give the voxel size explicitly") from None
    else:
        if spacing is None:
            spacing, sources = (1.0, 1.0, 1.0), ("default",) * 3
        source = (
            "metadata"
            if all(s == "metadata" for s in sources)
            else "default"
            if all(s == "default" for s in sources)
            else "partial"
        )
        if source != "metadata":
            missing = [a for a, s in zip("zyx", sources) if s == "default"]
            warnings.warn(
                SpacingWarning(
                    f"{path}: no voxel size for axis {', '.join(missing)} in the file's metadata: assuming "
                    + ", ".join(f"{a} = {v:g} um" for a, v, s in zip("zyx", spacing, sources) if s == "default")
                ),
                stacklevel=2,
            )

    if data.ndim != len(axes):
        raise ValueError(f"{path}: tifffile reported axes {axes!r} for an array of shape {data.shape}")
    # A plain page stack: the unnamed leading axis is z.
    if "Z" not in axes:
        generic = [i for i, a in enumerate(axes) if a in _GENERIC_STACK_AXES and data.shape[i] > 1]
        if len(generic) == 1:
            axes = axes[: generic[0]] + "Z" + axes[generic[0] + 1 :]
    data, axes, chan_index, chan_names = _select_channel(data, axes, channel, names, path)
    # Drop singleton axes we do not represent (e.g. T=1, unnamed page axes of length 1).
    keep = [i for i, a in enumerate(axes) if not (data.shape[i] == 1 and a not in "ZYX")]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    unsupported = [a for a in axes if a not in "TZYX"]
    if unsupported:
        raise ValueError(
            f"{path}: unsupported axes {''.join(unsupported)!r} in {axes!r} (shape {data.shape}); "
            "expected a (Z, Y, X) stack, optionally with time (T) and channel (C) axes"
        )
    if "Z" not in axes or data.shape[axes.index("Z")] < 2:
        raise ValueError(f"{path}: image is 2D (axes {axes!r}, shape {data.shape}); a 3D (Z, Y, X) stack is required")
    order = [axes.index(a) for a in "TZYX" if a in axes]
    data = np.transpose(data, order)
    axes = "".join(axes[i] for i in order)
    image = np.ascontiguousarray(data, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(image.size - np.count_nonzero(finite))
        raise ValueError(f"{path}: image contains {bad} NaN or Inf voxels; clean the image before fitting")
    meta = ImageMeta(
        spacing_um=tuple(float(s) for s in spacing),
        unit=unit,
        axes=axes,
        spacing_source=source,
        shape=tuple(image.shape),
        source_axes=series.axes,
        channel=chan_index,
        channel_names=chan_names,
        path=path,
        dtype=dtype,
        spacing_sources=tuple(sources),
    )
    return image, meta


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

_IMAGEJ_ORDER = "TZCYX"


def write_tiff(path, array, spacing_um, axes: str = "ZYX") -> None:
    """Write an ImageJ hyperstack TIFF with voxel size and unit 'um' (read by Fiji and napari).

    Parameters
    ----------
    path : str or os.PathLike
        Output file (written atomically).
    array : array-like, shape matching ``axes``
        uint8, uint16 and float32 are stored as they are; bool becomes uint8; other integer
        types become uint16 when their values fit, else float32; float64 becomes float32.
    spacing_um : float or sequence of 3 floats
        Voxel size (z, y, x) in micrometres.
    axes : str
        Axes of ``array``, made of 'T', 'Z', 'C', 'Y', 'X' (must include Z, Y and X), e.g.
        'ZYX', 'TZYX', 'CZYX', 'TZCYX'. Reordered to ImageJ's TZCYX on disk.
    """
    import tifffile

    sz, sy, sx = check_spacing(spacing_um, "spacing_um")
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'ZYX', got {axes!r}")
    axes = axes.upper()
    data = np.asarray(array)
    if len(set(axes)) != len(axes) or set(axes) - set(_IMAGEJ_ORDER) or not set("ZYX") <= set(axes):
        raise ValueError(f"axes must be distinct letters from 'TZCYX' including Z, Y and X, got {axes!r}")
    if data.ndim != len(axes):
        raise ValueError(f"array has {data.ndim} dimensions {data.shape} but axes={axes!r} names {len(axes)}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif np.issubdtype(data.dtype, np.integer) and data.dtype not in (np.uint8, np.uint16):
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        data = data.astype(np.uint16 if 0 <= lo and hi < 2**16 else np.float32)
    elif np.issubdtype(data.dtype, np.floating) and data.dtype != np.float32:
        data = data.astype(np.float32)
    elif not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.float32):
        raise TypeError(f"array must be numeric (got dtype {data.dtype})")
    order = [axes.index(a) for a in _IMAGEJ_ORDER if a in axes]
    data = np.transpose(data, order)
    ij_axes = "".join(axes[i] for i in order)
    metadata = {"axes": ij_axes, "spacing": sz, "unit": "um"}
    if data.dtype == np.float32 and data.size:
        finite = data[np.isfinite(data)]
        if finite.size:
            metadata["min"], metadata["max"] = float(finite.min()), float(finite.max())
    with atomic_write(path, "path") as tmp:
        tifffile.imwrite(
            tmp,
            data,
            imagej=True,
            software="deltamic",  # outdir.TIFF_SOFTWARE: lets --overwrite prove the file is ours
            resolution=(1.0 / sx, 1.0 / sy),
            metadata=metadata,
        )
