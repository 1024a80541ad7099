"""napari reader/writer contributions and the npe2 manifest (no viewer needed)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")

from napari_deltamic._reader import get_reader  # noqa: E402
from napari_deltamic._writer import write_surface  # noqa: E402

DATA = Path(__file__).parent / "data"


def _rec_path():
    return resources.files("deltamic_core") / "data" / "Sample01_007.rec"


def _imagej_tiff(path, arr, spacing_zyx):
    """Write a TIFF with ImageJ spacing metadata using tifffile directly (independent of the core)."""
    sz, sy, sx = spacing_zyx
    axes = "TZYX" if arr.ndim == 4 else "ZYX"
    tifffile.imwrite(
        path, arr, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata={"spacing": sz, "unit": "um", "axes": axes}
    )


def test_tiff_reader_sets_scale_from_voxel_spacing(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 1000, size=(6, 9, 11)).astype(np.uint16)
    path = tmp_path / "stack_a.tif"
    _imagej_tiff(path, arr, (2.0, 0.5, 0.25))
    reader = get_reader(str(path))
    assert callable(reader)
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image"
    np.testing.assert_array_equal(np.asarray(data), arr.astype(np.float32))
    np.testing.assert_allclose(kwargs["scale"], (2.0, 0.5, 0.25), rtol=1e-6)
    assert kwargs["name"] == "stack_a"


def test_tiff_reader_time_series_gets_unit_time_scale(tmp_path):
    arr = np.arange(3 * 4 * 5 * 6, dtype=np.uint16).reshape(3, 4, 5, 6)
    path = tmp_path / "movie.tiff"
    _imagej_tiff(path, arr, (1.5, 0.2, 0.2))
    ((data, kwargs, kind),) = get_reader(str(path))(str(path))
    assert kind == "image" and np.asarray(data).shape == arr.shape
    np.testing.assert_allclose(kwargs["scale"], (1.0, 1.5, 0.2, 0.2), rtol=1e-6)


def test_reader_declines_other_files():
    assert get_reader("image.png") is None
    assert get_reader(["a.tif", "b.png"]) is None


def test_rec_reader_keeps_cell_labels_and_colours_cells(tmp_path):
    with resources.as_file(_rec_path()) as rec:
        text = Path(rec).read_text().split()
        ((data, kwargs, kind),) = get_reader(str(rec))(str(rec))
    assert kind == "surface"
    verts, faces, values = data
    # independent parse of the .rec header: vertex count, then rows; faces with (l1, l2)
    nv = int(text[0])
    raw_v = np.asarray(text[1 : 1 + 3 * nv], dtype=np.float64).reshape(nv, 3)
    nf = int(text[1 + 3 * nv])
    raw_f = np.asarray(text[2 + 3 * nv : 2 + 3 * nv + 5 * nf], dtype=np.int64).reshape(nf, 5)
    assert verts.shape == (nv, 3) and faces.shape == (nf, 3)
    # no spacing comment: vertices stay in voxel units and the layer says so
    np.testing.assert_allclose(verts, raw_v, rtol=1e-6)
    np.testing.assert_array_equal(faces, raw_f[:, :3])
    np.testing.assert_array_equal(kwargs["metadata"]["labels"], raw_f[:, 3:])
    assert kwargs["metadata"]["voxel_units"] is True
    # every vertex of an outer face of cell c (labels (0, c)) that touches only cell c is coloured c
    cells = np.unique(raw_f[:, 3:])
    cells = cells[cells > 0]
    assert set(np.unique(values).astype(int)) == set(cells.tolist())
    for c in cells:
        own = np.unique(faces[(raw_f[:, 3] == 0) & (raw_f[:, 4] == c)])
        touched = [set(np.unique(raw_f[np.any(faces == v, axis=1), 3:])) - {0} for v in own[:50]]
        only_c = [v for v, t in zip(own[:50], touched) if t == {c}]
        assert only_c and np.all(values[only_c] == c)


@pytest.mark.parametrize("suffix", [".rec", ".ply", ".obj"])
def test_surface_writer_round_trip(tmp_path, suffix):
    with resources.as_file(_rec_path()) as rec:
        ((data, kwargs, _),) = get_reader(str(rec))(str(rec))
    verts = np.asarray(data[0], dtype=np.float64) * 0.3 + 1.0  # as if placed on a 0.3 um grid
    layer_data = (verts.astype(np.float32), data[1], data[2])
    meta = {"metadata": {"labels": kwargs["metadata"]["labels"]}, "scale": (1.0, 1.0, 1.0), "name": "cells"}
    out = tmp_path / f"cells{suffix}"
    written = write_surface(str(out), layer_data, meta)
    assert written == [str(out)]
    assert not list(tmp_path.glob("*.tmp*")), "the writer must not leave temporary files"
    ((data2, kwargs2, kind),) = get_reader(str(out))(str(out))
    assert kind == "surface"
    # mesh formats may drop unreferenced vertices or reorder; compare the triangle soups
    tri1 = np.sort(layer_data[0][layer_data[1]].reshape(-1, 9), axis=0)
    tri2 = np.sort(np.asarray(data2[0])[np.asarray(data2[1])].reshape(-1, 9), axis=0)
    np.testing.assert_allclose(tri2, tri1, atol=1e-4)
    if suffix == ".rec":
        np.testing.assert_array_equal(kwargs2["metadata"]["labels"], kwargs["metadata"]["labels"])


def test_surface_writer_applies_layer_scale(tmp_path):
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    out = tmp_path / "tet.ply"
    write_surface(str(out), (verts, faces), {"scale": (2.0, 3.0, 4.0), "translate": (1.0, 0.0, 0.0), "metadata": {}})
    ((data2, _, _),) = get_reader(str(out))(str(out))
    expected = verts * np.array([2.0, 3.0, 4.0]) + np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(np.sort(np.asarray(data2[0]), axis=0), np.sort(expected, axis=0), atol=1e-5)


def test_surface_writer_rejects_unknown_suffix(tmp_path):
    verts = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="path must end with"):
        write_surface(str(tmp_path / "x.stl"), (verts, np.array([[0, 1, 2]])), {})


def test_obj_reader_matches_trimesh():
    trimesh = pytest.importorskip("trimesh")
    path = DATA / "cow.obj"
    ((data, kwargs, kind),) = get_reader(str(path))(str(path))
    ref = trimesh.load(path, process=False, force="mesh")
    assert kind == "surface"
    assert len(data[1]) == len(ref.faces)
    # the core maps file columns onto (z, y, x); any column order must preserve the geometry
    area = lambda v, f: 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum()
    assert area(np.asarray(data[0], float), np.asarray(data[1])) == pytest.approx(ref.area, rel=1e-5)


def test_npe2_manifest_validates_with_imports():
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-deltamic", "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout.lower()


def test_manifest_contributions():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-deltamic")
    c = pm.contributions
    patterns = {p for r in c.readers for p in r.filename_patterns}
    assert {"*.tif", "*.tiff", "*.obj", "*.ply", "*.stl", "*.off", "*.vtk", "*.rec"} <= patterns
    assert {e for w in c.writers for e in w.filename_extensions} == {".obj", ".ply", ".rec"}
    assert [s.display_name for s in c.sample_data] == ["deltaMic synthetic 3-cell embryo"]
    assert len(c.widgets) == 1


# ---------------------------------------------------------------------------------------------
# 10. napari reader claims only what it can read
# ---------------------------------------------------------------------------------------------
def test_case10_get_reader_returns_none_for_what_it_cannot_read(tmp_path):
    from napari_deltamic._reader import get_reader

    tifffile.imwrite(tmp_path / "2d.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "text.tif").write_text("hello, not a tiff")
    (tmp_path / "dir.tif").mkdir()
    (tmp_path / "empty.ply").write_bytes(b"")
    for name in ("2d.tif", "rgb.tif", "empty.tif", "text.tif", "missing.tif", "dir.tif", "empty.ply"):
        assert get_reader(str(tmp_path / name)) is None, name
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((6, 8, 8), np.uint8))
    assert get_reader(str(tmp_path / "ok.tif")) is not None
    assert get_reader([str(tmp_path / "ok.tif"), str(tmp_path / "2d.tif")]) is None
