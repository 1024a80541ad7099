"""napari readers: TIFF stacks -> Image layers in um, cell meshes -> Surface layers in um.

All parsing is done by ``deltamic_core.io``; this module only turns the results into layer data
tuples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._layers import SPACING_KEY, VOXEL_UNITS_KEY, mesh_to_layer_data, units_for

IMAGE_SUFFIXES = (".tif", ".tiff")
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".vtk", ".rec")


def _suffix(path) -> str:
    return Path(str(path)).suffix.lower()


def get_reader(path):
    """Return a reader function for ``path`` (or for a list of paths), or None if not ours.

    Only files this plugin can actually read are claimed: a TIFF must hold a 3D (Z, Y, X) stack
    (2D images, RGB pictures, empty, damaged or non-TIFF files, missing paths and directories
    are left to napari's own readers); a mesh file must exist and not be empty.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths:
        return None
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            return None
        suffix = _suffix(p)
        if suffix in IMAGE_SUFFIXES:
            if not _is_3d_tiff(p):
                return None
        elif suffix in MESH_SUFFIXES:
            try:
                if not Path(p).is_file() or Path(p).stat().st_size == 0:
                    return None
            except OSError:
                return None
        else:
            return None
    return read_layers


def _is_3d_tiff(path) -> bool:
    """True if ``path`` is a readable TIFF whose first series is a (T)(C)ZYX stack (header only)."""
    import logging

    try:
        p = Path(path)
        if not p.is_file() or p.stat().st_size < 8:
            return False
        import tifffile

        log = logging.getLogger("tifffile")
        was = log.disabled
        log.disabled = True
        try:
            with tifffile.TiffFile(p) as tf:
                if not tf.series:
                    return False
                series = tf.series[0]
                axes, shape = series.axes.upper(), tuple(series.shape)
        finally:
            log.disabled = was
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    if len(axes) != len(shape) or 0 in shape:
        return False
    sizes = {a: n for a, n in zip(axes, shape)}
    if "Y" not in sizes or "X" not in sizes:
        return False
    if "Z" in sizes:
        return sizes["Z"] >= 2
    # a plain page stack: exactly one unnamed axis longer than 1 is z
    generic = [n for a, n in zip(axes, shape) if a in "IQ" and n > 1]
    return len(generic) == 1 and generic[0] >= 2


def read_layers(path) -> list[tuple]:
    """Read one or several files into a list of layer data tuples."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    out: list[tuple] = []
    for p in paths:
        if _suffix(p) in IMAGE_SUFFIXES:
            out.extend(read_image_layer(p))
        else:
            out.append(read_mesh_layer(p))
    return out


def read_image_layer(path) -> list[tuple]:
    """A TIFF stack as Image layer(s) whose ``scale`` is the voxel spacing in um.

    A (Z, Y, X) stack gets scale (sz, sy, sx); a time series (T, Z, Y, X) gets (1, sz, sy, sx).
    A multi-channel file gives one layer per channel.
    """
    from deltamic_core.io import read_image

    try:
        return [_image_tuple(path, *read_image(path))]
    except ValueError as first_error:
        # several channels: the core asks which one; napari shows them all, one layer each
        try:
            data, meta = read_image(path, channel=0)
        except ValueError:
            raise first_error from None
        if len(meta.channel_names) < 2:
            raise first_error from None
        layers = [_image_tuple(path, data, meta)]
        for c in range(1, len(meta.channel_names)):
            layers.append(_image_tuple(path, *read_image(path, channel=c)))
        return layers


def _image_tuple(path, data, meta) -> tuple:
    spacing = tuple(float(s) for s in meta.spacing_um)
    if data.ndim == 4:
        scale = (1.0,) + spacing
        axis_labels = ("t", "z", "y", "x")
    else:
        scale = spacing
        axis_labels = ("z", "y", "x")
    name = Path(str(path)).stem
    if meta.channel is not None:
        name = f"{name} [{meta.channel_names[meta.channel]}]"
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    kwargs = {
        "name": name,
        "scale": scale,
        "axis_labels": axis_labels,
        "units": units_for(data.ndim),
        "metadata": {
            SPACING_KEY: spacing,
            "spacing_source": meta.spacing_source,
            # per axis (z, y, x): 'metadata', 'override' or 'default' (assumed, warned)
            "spacing_sources": tuple(meta.spacing_sources),
            "unit": meta.unit,
            "axes": meta.axes,
            "source": os.fspath(path),
        },
        "contrast_limits": (lo, hi if hi > lo else lo + 1.0),
        "blending": "additive",
    }
    return (data, kwargs, "image")


def read_mesh_layer(path) -> tuple:
    """A mesh file as a Surface layer with vertices in um (z, y, x).

    A ``.rec`` file without a spacing comment is in voxel units of its source stack; the layer is
    flagged (``metadata["voxel_units"] = True``) so that the widget can place it on an image grid.
    """
    from deltamic_core.io import read_mesh

    mesh = read_mesh(path)
    # voxel coordinates with no spacing anywhere (the core then assumed 1 um per voxel)
    in_voxels = mesh.metadata.get("source_units") == "voxel" and mesh.metadata.get("spacing_source") == "default"
    extra = {"source": os.fspath(path), VOXEL_UNITS_KEY: bool(in_voxels)}
    return mesh_to_layer_data(mesh, Path(str(path)).stem, extra_metadata=extra)
