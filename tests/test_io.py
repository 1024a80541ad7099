"""deltamic_core.io: atomic writes, TIFF metadata, mesh formats and the native .rec format."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import tifffile
import trimesh

from deltamic_core.io import (
    ImageMeta,
    atomic_write,
    read_image,
    read_mesh,
    read_rec,
    unit_to_um,
    write_mesh,
    write_rec,
    write_tiff,
)
from deltamic_core.mesh import Mesh

DATA = Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data"
SAMPLE = DATA / "Sample01_007.rec"
COW = Path(__file__).resolve().parent / "data" / "cow.obj"


def _signed_volume(verts, faces):
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)


def _listing(directory):
    return sorted(p.name for p in Path(directory).iterdir())


# ------------------------------------------------------------------------------------------
# atomic_write
# ------------------------------------------------------------------------------------------


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write("half-written")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["out.txt"]  # no temporary file left behind
    with atomic_write(target, "w") as fh:
        fh.write("new")
    assert target.read_text() == "new"
    assert _listing(tmp_path) == ["out.txt"]


def test_atomic_write_failure_leaves_no_new_file(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "x.bin") as fh:
            fh.write(b"123")
            raise ValueError("boom")
    assert _listing(tmp_path) == []


def test_atomic_write_path_mode_keeps_suffix_and_normal_permissions(tmp_path):
    with atomic_write(tmp_path / "a.tif", "path") as tmp:
        assert tmp.suffix == ".tif" and tmp.parent == tmp_path
        tmp.write_bytes(b"data")
    assert (tmp_path / "a.tif").read_bytes() == b"data"
    mode = stat.S_IMODE(os.stat(tmp_path / "a.tif").st_mode)
    assert mode & 0o044  # not the 0600 of a raw temporary file (umask permitting)


def test_atomic_write_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_write(tmp_path / "nope" / "a.txt", "w"):
            pass


def test_write_tiff_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        Path(args[0]).write_bytes(b"II*\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        write_tiff(tmp_path / "img.tif", np.zeros((3, 4, 5), np.float32), 1.0)
    assert _listing(tmp_path) == []


def test_write_mesh_interrupted_mid_write_keeps_old_file(tmp_path, monkeypatch):
    import deltamic_core.io.rec as rec_module

    mesh = read_mesh(SAMPLE)
    target = tmp_path / "m.rec"
    write_mesh(target, mesh)
    before = target.read_bytes()
    real_atomic_write = rec_module.atomic_write

    class DiskFullAfterTwoWrites:
        def __init__(self, fh):
            self.fh, self.calls = fh, 0

        def write(self, data):
            self.calls += 1
            if self.calls > 2:
                raise OSError("disk full")
            return self.fh.write(data)

    @contextlib.contextmanager
    def flaky_atomic_write(path, mode="wb", **kwargs):
        with real_atomic_write(path, mode, **kwargs) as fh:
            yield DiskFullAfterTwoWrites(fh)

    monkeypatch.setattr(rec_module, "atomic_write", flaky_atomic_write)
    for binary in (False, True):
        with pytest.raises(OSError, match="disk full"):
            write_mesh(target, mesh, binary=binary)
        assert target.read_bytes() == before
        assert _listing(tmp_path) == ["m.rec"]


# ------------------------------------------------------------------------------------------
# TIFF images
# ------------------------------------------------------------------------------------------


def test_write_tiff_round_trip_zyx(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((6, 7, 8)).astype(np.float32)
    path = tmp_path / "img.tif"
    write_tiff(path, img, (0.7, 0.13, 0.11))
    out, meta = read_image(path)
    assert out.dtype == np.float32 and np.array_equal(out, img)
    assert meta.axes == "ZYX" and meta.shape == (6, 7, 8)
    assert meta.spacing_source == "metadata" and meta.unit == "um"
    np.testing.assert_allclose(meta.spacing_um, (0.7, 0.13, 0.11), rtol=1e-6)
    # what Fiji reads: an ImageJ hyperstack, unit um, voxel depth in 'spacing'
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej
        assert tf.imagej_metadata["unit"] == "um"
        assert tf.imagej_metadata["spacing"] == pytest.approx(0.7)
        assert tf.imagej_metadata["slices"] == 6


def test_write_tiff_round_trip_time_and_channels(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 4000, size=(3, 5, 2, 6, 7)).astype(np.uint16)  # T Z C Y X
    path = tmp_path / "tzcyx.tif"
    write_tiff(path, img, (1.0, 0.2, 0.2), axes="TZCYX")
    with pytest.raises(ValueError, match=r"2 channels \(0: '0', 1: '1'\)"):
        read_image(path)
    out, meta = read_image(path, channel=1)
    assert meta.axes == "TZYX" and meta.channel == 1 and meta.dtype == "uint16"
    np.testing.assert_array_equal(out, img[:, :, 1].astype(np.float32))
    with pytest.raises(ValueError, match="out of range"):
        read_image(path, channel=2)


def test_write_tiff_reorders_axes_and_converts_labels(tmp_path):
    labels = np.zeros((4, 5, 6), np.int32)
    labels[1:3, 1:4, 2:5] = 7
    path = tmp_path / "labels.tif"
    write_tiff(path, np.transpose(labels, (2, 0, 1)), (2.0, 1.0, 0.5), axes="XZY")
    out, meta = read_image(path)
    assert meta.dtype == "uint16"
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_allclose(meta.spacing_um, (2.0, 1.0, 0.5))


@pytest.mark.parametrize(
    "unit, factor",
    [("micron", 1.0), ("\\u00B5m", 1.0), ("um", 1.0), ("nm", 1e-3), ("mm", 1e3)],
)
def test_read_imagej_spacing_and_units(tmp_path, unit, factor):
    path = tmp_path / "ij.tif"
    data = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    # written with tifffile directly: resolution is pixels per unit, 'spacing' the z step
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.125, 1 / 0.25),
        metadata={"axes": "ZYX", "spacing": 0.5, "unit": unit},
    )
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(meta.spacing_um, np.array([0.5, 0.25, 0.125]) * factor, rtol=1e-9)
    assert meta.spacing_source == "metadata"


def test_read_imagej_uncalibrated_is_default(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((4, 5, 6), np.float32), imagej=True, metadata={"axes": "ZYX"})
    _, meta = read_image(path)
    assert meta.spacing_source == "default" and meta.spacing_um == (1.0, 1.0, 1.0) and meta.unit == "pixel"


def test_read_ome_spacing_units_and_channel_names(tmp_path):
    path = tmp_path / "img.ome.tif"
    data = np.random.default_rng(2).random((4, 2, 5, 6)).astype(np.float32)  # Z C Y X
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": 110.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.12,
            "PhysicalSizeYUnit": "\u00b5m",
            "PhysicalSizeZ": 0.0005,
            "PhysicalSizeZUnit": "mm",
            "Channel": {"Name": ["nuclei", "membrane"]},
        },
    )
    with pytest.raises(ValueError, match="'nuclei'.*'membrane'"):
        read_image(path)
    out, meta = read_image(path, channel="membrane")
    np.testing.assert_array_equal(out, data[:, 1])
    np.testing.assert_allclose(meta.spacing_um, (0.5, 0.12, 0.11), rtol=1e-9)
    assert meta.channel == 1 and meta.channel_names == ("nuclei", "membrane")
    with pytest.raises(ValueError, match="not found"):
        read_image(path, channel="actin")


def test_read_ome_time_series(tmp_path):
    path = tmp_path / "t.ome.tif"
    data = np.random.default_rng(3).random((3, 4, 5, 6)).astype(np.float32)
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "TZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.0},
    )
    out, meta = read_image(path)
    assert meta.axes == "TZYX" and out.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(meta.spacing_um, (1.0, 0.2, 0.2))


def test_plain_tiff_defaults_and_override(tmp_path):
    path = tmp_path / "plain.tif"
    data = np.random.default_rng(4).random((9, 5, 6)).astype(np.float32)
    tifffile.imwrite(path, data, metadata=None)
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert meta.axes == "ZYX" and meta.spacing_source == "default" and meta.spacing_um == (1.0, 1.0, 1.0)
    _, meta = read_image(path, spacing_um=(2, 0.5, 0.5))
    assert meta.spacing_source == "override" and meta.spacing_um == (2.0, 0.5, 0.5)
    # the override also beats real metadata
    write_tiff(tmp_path / "ij.tif", data, (3.0, 1.0, 1.0))
    _, meta = read_image(tmp_path / "ij.tif", spacing_um=0.3)
    assert meta.spacing_um == (0.3, 0.3, 0.3) and meta.spacing_source == "override"
    assert isinstance(meta, ImageMeta)


def test_read_image_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_image(tmp_path / "missing.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff")
    with pytest.raises(ValueError, match="junk.tif.*not a readable TIFF"):
        read_image(junk)
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((5, 6), np.float32))
    with pytest.raises(ValueError, match="2D"):
        read_image(flat)
    nan = tmp_path / "nan.tif"
    bad = np.zeros((3, 5, 6), np.float32)
    bad[1, 2, 3] = np.nan
    tifffile.imwrite(nan, bad, photometric="minisblack")
    with pytest.raises(ValueError, match=r"nan.tif: image contains 1 NaN"):
        read_image(nan)
    odd = tmp_path / "odd.tif"
    tifffile.imwrite(odd, np.zeros((2, 3, 5, 6), np.float32), metadata={"axes": "EZYX"})
    with pytest.raises(ValueError, match="unsupported axes 'E'"):
        read_image(odd)
    with pytest.raises(ValueError, match="spacing_um"):
        read_image(nan, spacing_um=(1, -1, 1))
    with pytest.raises(ValueError, match="axes"):
        write_tiff(tmp_path / "x.tif", np.zeros((2, 3, 4)), 1.0, axes="ZY")


def test_unit_conversion_table():
    assert unit_to_um("\u00b5m") == unit_to_um("\u03bcm") == unit_to_um("micron") == 1.0
    assert unit_to_um("NM") == 1e-3 and unit_to_um("pixel") is None
    with pytest.raises(ValueError, match="unknown length unit"):
        unit_to_um("furlong")


# ------------------------------------------------------------------------------------------
# meshes
# ------------------------------------------------------------------------------------------


def test_bundled_sample_rec():
    mesh = read_mesh(SAMPLE)
    assert mesh.verts.shape == (1996, 3) and mesh.faces.shape == (4055, 3)
    assert set(np.unique(mesh.labels)) == {0, 1, 2, 3}
    assert mesh.metadata["format"] == "rec-text"
    assert mesh.metadata["source_units"] == "voxel" and mesh.metadata["spacing_source"] == "default"
    # first point of the file, as written
    np.testing.assert_array_equal(mesh.verts[0], [142.3428955078125, 94.18389892578125, 119.14620971679688])
    np.testing.assert_array_equal(mesh.faces[-1], [590, 1783, 81])
    np.testing.assert_array_equal(mesh.labels[-1], [1, 3])
    scaled = read_mesh(SAMPLE, spacing_um=(2.0, 0.5, 0.25))
    np.testing.assert_allclose(scaled.verts, mesh.verts * [2.0, 0.5, 0.25])
    assert scaled.metadata["spacing_source"] == "argument"


@pytest.mark.parametrize("binary", [False, True])
def test_rec_round_trip_exact(tmp_path, binary):
    mesh = read_mesh(SAMPLE)
    rng = np.random.default_rng(5)
    mesh = mesh.copy(verts=mesh.verts + rng.normal(size=mesh.verts.shape) * 1e-3)  # full float64 digits
    path = tmp_path / "m.rec"
    write_mesh(path, mesh, binary=binary)
    back = read_mesh(path)
    assert back.metadata["format"] == ("rec-binary" if binary else "rec-text")
    np.testing.assert_array_equal(back.verts, mesh.verts)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.labels, mesh.labels)
    assert back.metadata["source_units"] == "um"


@pytest.mark.parametrize("binary", [False, True])
def test_rec_voxel_units_with_spacing_comment(tmp_path, binary):
    mesh = read_mesh(SAMPLE, spacing_um=(0.5, 0.2, 0.1))
    path = tmp_path / "v.rec"
    write_mesh(path, mesh, spacing_um=(0.5, 0.2, 0.1), binary=binary)
    raw = read_rec(path)
    assert raw.binary is binary
    np.testing.assert_allclose(raw.coords, read_rec(SAMPLE).coords, rtol=1e-15)  # voxel units, like the original
    assert raw.comments["units"] == "voxel" and raw.comments["axis_order"] == "zyx"
    back = read_mesh(path)
    assert back.metadata["spacing_source"] == "file" and back.metadata["spacing_um"] == (0.5, 0.2, 0.1)
    np.testing.assert_allclose(back.verts, mesh.verts, rtol=1e-15)
    # an explicit spacing overrides the comment
    np.testing.assert_allclose(read_mesh(path, spacing_um=1.0).verts, raw.coords)


def test_rec_binary_layout_matches_specification(tmp_path):
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    labels = np.array([[1, 0]] * 4)
    path = tmp_path / "t.rec"
    write_rec(path, verts, faces, labels, binary=True)
    raw = path.read_bytes()
    assert len(raw) == 8 + 4 * 24 + 8 + 4 * (24 + 8)
    assert int.from_bytes(raw[:8], "little") == 4
    np.testing.assert_array_equal(np.frombuffer(raw[8:104], "<f8").reshape(4, 3), verts)
    assert int.from_bytes(raw[104:112], "little") == 4
    first = raw[112:144]
    assert np.frombuffer(first[:24], "<i8").tolist() == [0, 2, 1]
    assert np.frombuffer(first[24:], "<i4").tolist() == [1, 0]


def test_rec_tolerates_comments_and_blank_lines(tmp_path):
    path = tmp_path / "c.rec"
    path.write_text("3\n0 0 0\n1 0 0\n\n0 1 0\n1\n0 1 2 0 1\n# spacing = 2 3 4\n# axis_order = zyx\n# note = hello\n")
    mesh = read_mesh(path)
    np.testing.assert_array_equal(mesh.verts, [[0, 0, 0], [2, 0, 0], [0, 3, 0]])
    assert mesh.metadata["comments"] == {"note": "hello"}
    path.write_text("3\n0 0 0\n1 0 0\n0 1 0\n1\n0 1 2 0 1\n# units = um\n")
    with pytest.warns(UserWarning, match="ignored"):
        mesh = read_mesh(path, spacing_um=5.0)
    np.testing.assert_array_equal(mesh.verts[1], [1, 0, 0])


def test_rec_malformed_files_are_clear_errors(tmp_path):
    path = tmp_path / "bad.rec"
    path.write_text("3\n0 0 0\n1 0 0\n")
    with pytest.raises(ValueError, match="bad.rec: truncated"):
        read_mesh(path)
    path.write_text("3\n0 0 0\n1 0 0\n0 1 oops\n1\n0 1 2 0 1\n")
    with pytest.raises(ValueError, match="bad.rec, line 4: expected 3 coordinate"):
        read_mesh(path)
    path.write_text("3\n0 0 0\n1 0 0\n0 1 0\n1\n0 1 5 0 1\n")
    with pytest.raises(ValueError, match="indices span"):
        read_mesh(path)
    path.write_bytes(np.uint64(10).tobytes() + b"\x00" * 30)
    with pytest.raises(ValueError, match="truncated or invalid binary"):
        read_mesh(path)
    with pytest.raises(FileNotFoundError):
        read_mesh(tmp_path / "none.rec")
    with pytest.raises(ValueError, match="unsupported mesh format '.xyz'"):
        read_mesh(tmp_path / "a.xyz")


@pytest.mark.parametrize("suffix", [".ply", ".vtk", ".vtu", ".obj", ".off"])
def test_generic_formats_round_trip(tmp_path, suffix):
    mesh = read_mesh(SAMPLE, spacing_um=(0.37, 0.21, 0.21))
    path = tmp_path / f"m{suffix}"
    keeps_labels = suffix in (".ply", ".vtk", ".vtu")
    if keeps_labels:
        write_mesh(path, mesh)
    else:
        with pytest.warns(UserWarning, match="cannot store the per-face labels"):
            write_mesh(path, mesh)
    back = read_mesh(path)
    np.testing.assert_array_equal(back.verts, mesh.verts)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    if keeps_labels:
        np.testing.assert_array_equal(back.labels, mesh.labels)
    else:
        assert back.labels is None


def test_stl_round_trip_merges_duplicate_corners(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    mesh = Mesh(sphere.vertices, sphere.faces)
    path = tmp_path / "s.stl"
    write_mesh(path, mesh)
    back = read_mesh(path)
    assert back.verts.shape == mesh.verts.shape and back.faces.shape == mesh.faces.shape
    # STL stores float32 corners: same triangles to float32 precision
    np.testing.assert_allclose(back.verts[back.faces], mesh.verts[mesh.faces], atol=1e-6)
    raw = read_mesh(path, merge_vertices=False)
    assert len(raw.verts) == 3 * len(mesh.faces)


def test_obj_vertices_are_not_split_or_reordered():
    mesh = read_mesh(COW)
    file_verts = np.array(
        [line.split()[1:4] for line in COW.read_text().splitlines() if line.startswith("v ")], dtype=float
    )
    np.testing.assert_array_equal(mesh.verts, file_verts)  # 2930, despite 3225 texture corners
    assert mesh.faces.shape == (5856, 3)


def test_axis_order_xyz_flips_columns_and_keeps_orientation(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=2.0)
    sphere.vertices += [10.0, 20.0, 30.0]  # (x, y, z) as a generic tool writes them
    path = tmp_path / "xyz.ply"
    sphere.export(path)
    mesh = read_mesh(path, axis_order="xyz")
    np.testing.assert_allclose(mesh.verts, np.asarray(sphere.vertices)[:, ::-1], atol=1e-6)
    assert _signed_volume(mesh.verts, mesh.faces) > 0  # still outward after the mirror
    write_mesh(tmp_path / "again.rec", mesh, axis_order="xyz", spacing_um=(1.0, 0.5, 0.25))
    raw = read_rec(tmp_path / "again.rec")
    assert raw.comments["axis_order"] == "xyz" and raw.comments["spacing"] == "0.25 0.5 1.0"
    back = read_mesh(tmp_path / "again.rec")
    np.testing.assert_allclose(back.verts, mesh.verts, rtol=1e-15)
    np.testing.assert_array_equal(back.faces, mesh.faces)


def test_generic_units_and_spacing(tmp_path):
    mesh = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]), np.array([[0, 1, 2]]))
    path = tmp_path / "t.off"
    write_mesh(path, mesh)
    np.testing.assert_allclose(read_mesh(path, units="nm").verts[1], [1e-3, 0, 0])
    np.testing.assert_allclose(read_mesh(path, spacing_um=(2, 3, 4)).verts[2], [0, 3, 0])
    with pytest.raises(ValueError, match="contradicts spacing_um"):
        read_mesh(path, spacing_um=2.0, units="um")
    with pytest.raises(ValueError, match="units"):
        read_mesh(path, units="parsec")


def test_plain_mesh_written_as_rec_gets_outward_labels(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=1)
    mesh = Mesh(sphere.vertices, sphere.faces)
    write_mesh(tmp_path / "s.rec", mesh)
    back = read_mesh(tmp_path / "s.rec")
    # normal points from l1 into l2: outward normals leave cell 1 into the outside 0
    assert np.all(back.labels == [1, 0])


def test_write_mesh_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="Mesh"):
        write_mesh(tmp_path / "a.rec", {"verts": []})
    bad = Mesh(np.array([[0, 0, np.nan], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="NaN"):
        write_mesh(tmp_path / "a.ply", bad)
    assert _listing(tmp_path) == []
