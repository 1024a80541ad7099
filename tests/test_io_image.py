"""deltamic_core.io.image: the voxel size's provenance (ImageJ/OME metadata, defaults named in a
warning, zero refused) and a truncated TIFF read without tifffile log lines.

The number in a test's name is the case of the data-safety issue (10) it guards.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import tifffile


# ---------------------------------------------------------------------------------------------
# 4. spacing provenance
# ---------------------------------------------------------------------------------------------
def _imagej(path, spacing=None, unit="um", xy=0.5):
    md = {"axes": "ZYX", "unit": unit}
    if spacing is not None:
        md["spacing"] = spacing
    tifffile.imwrite(
        path,
        np.random.default_rng(0).random((5, 8, 8)).astype(np.float32),
        imagej=True,
        resolution=(1 / xy, 1 / xy),
        metadata=md,
    )


def test_case04_imagej_without_z_step_warns_and_says_default(tmp_path):
    from deltamic_core.io import read_image
    from deltamic_core.io.image import SpacingWarning

    _imagej(tmp_path / "a.tif")
    with pytest.warns(SpacingWarning, match="axis z"):
        _, meta = read_image(tmp_path / "a.tif")
    assert meta.spacing_sources == ("default", "metadata", "metadata")
    assert meta.spacing_source == "partial" and meta.assumed_axes == ("z",)
    _imagej(tmp_path / "b.tif", spacing=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, meta = read_image(tmp_path / "b.tif")
    assert meta.spacing_source == "metadata" and meta.spacing_um == (2.0, 0.5, 0.5)


def test_case04_spacing_zero_is_refused(tmp_path):
    from deltamic_core.io import read_image

    _imagej(tmp_path / "z0.tif", spacing=0.0)
    with pytest.raises(ValueError, match="not a positive voxel size"):
        read_image(tmp_path / "z0.tif")
    _, meta = read_image(tmp_path / "z0.tif", spacing_um=(1, 1, 1))  # an explicit size is fine
    assert meta.spacing_source == "override"


def test_case04_ome_without_physical_size_z(tmp_path):
    from deltamic_core.io import read_image
    from deltamic_core.io.image import SpacingWarning

    p = tmp_path / "o.ome.tif"
    tifffile.imwrite(
        p,
        np.random.default_rng(0).random((5, 8, 8)).astype(np.float32),
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3},
    )
    with pytest.warns(SpacingWarning):
        _, meta = read_image(p)
    assert meta.spacing_sources[0] == "default" and meta.spacing_um[1:] == (0.3, 0.3)


# ---------------------------------------------------------------------------------------------
# 9. truncated TIFF: no tifffile log lines
# ---------------------------------------------------------------------------------------------
def test_case09_truncated_tiff_logs_nothing(tmp_path, caplog):
    from deltamic_core.io import read_image

    p = tmp_path / "t.tif"
    tifffile.imwrite(p, np.random.default_rng(0).random((6, 32, 32)).astype(np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ValueError):
            read_image(p)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
