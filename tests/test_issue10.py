"""Issue 10: never lose a user's data, never return a silently wrong measurement.

One regression test (or a few) per numbered case of the issue; the case number is in the name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import trimesh

from deltamic_core.io import outdir
from deltamic_core.io.outdir import MANIFEST_NAME, OutputError


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _tree(root: Path) -> dict:
    """relative path -> sha256 of every file below root (the user's data, to compare)."""
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _publish(out: Path, files: dict, **kw) -> None:
    with outdir.staged_output(out, **kw) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


# ---------------------------------------------------------------------------------------------
# 1. the output deletes the input / ownership must be proven
# ---------------------------------------------------------------------------------------------
def test_case01_directory_with_user_files_named_like_outputs_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.tif").write_bytes(b"raw data")
    (data / "measurements.csv").write_text("hand,made\n")
    before = _tree(data)
    with pytest.raises(OutputError, match="did not write"):
        outdir.check_output_dir(data, overwrite=True)
    with pytest.raises(OutputError):
        _publish(data, {"report.json": "{}"}, overwrite=True)
    assert _tree(data) == before


def test_case01_input_inside_the_output_is_refused_even_if_ours(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"labels.tif": "ours"})
    assert outdir.is_ours(out)
    with pytest.raises(OutputError, match="contains the input"):
        outdir.check_output_dir(out, overwrite=True, inputs=[out / "labels.tif"])
    with pytest.raises(OutputError, match="contains the input"):
        outdir.check_output_dir(tmp_path / "out", overwrite=True, inputs=[str(out / "x" / ".." / "labels.tif")])


def test_case01_changed_or_extended_output_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"a.csv": "1", "b.csv": "2"})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        outdir.check_output_dir(out, overwrite=True)
    (out / "notes.txt").unlink()
    (out / "a.csv").write_text("edited by hand")
    with pytest.raises(OutputError, match="changed"):
        outdir.check_output_dir(out, overwrite=True)
    (out / "a.csv").write_text("1")
    outdir.check_output_dir(out, overwrite=True)  # identical again: ours
    _publish(out, {"c.csv": "3"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == ["c.csv"]


def test_case01_a_forged_manifest_does_not_make_a_directory_ours(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "raw.tif").write_bytes(b"x")
    (d / MANIFEST_NAME).write_text(json.dumps({"tool": "deltamic", "files": {}}))
    with pytest.raises(OutputError):
        outdir.check_output_dir(d, overwrite=True)
    assert (d / "raw.tif").read_bytes() == b"x"


# ---------------------------------------------------------------------------------------------
# 3. the output location is validated before any work; stale staging dirs are swept
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [".", "..", "", "./", "sub/.."])
def test_case03_dot_and_dotdot_are_refused_up_front(bad, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub" if bad == ".." else tmp_path)
    with pytest.raises(OutputError):
        outdir.check_output_dir(bad)


def test_case03_missing_parent_file_and_read_only_parent(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        outdir.check_output_dir(tmp_path / "nope" / "out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        outdir.check_output_dir(tmp_path / "f")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(OutputError, match="not writable"):
            outdir.check_output_dir(ro / "out")
    finally:
        ro.chmod(0o755)


def test_case03_ancestor_of_cwd_is_refused(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    with pytest.raises(OutputError, match="current directory"):
        outdir.check_output_dir(tmp_path / "a")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_case03_stale_partials_of_dead_runs_are_swept_only_if_ours(tmp_path):
    pid = _dead_pid()
    stale = tmp_path / f".out.partial-{pid}-0123abcd"
    stale.mkdir()
    (stale / outdir.MARKER_NAME).write_text("{}")
    (stale / "mesh.ply").write_text("half")
    foreign = tmp_path / f".out.partial-{pid}-89abcdef"  # same pattern, no marker: not ours
    foreign.mkdir()
    (foreign / "x").write_text("keep")
    alive = tmp_path / f".out.partial-{os.getppid()}-00000000"  # a live process: never touched
    alive.mkdir()
    (alive / outdir.MARKER_NAME).write_text("{}")
    outdir.check_output_dir(tmp_path / "out")
    assert not stale.exists() and foreign.exists() and alive.exists()


def test_case03_failure_inside_the_block_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with outdir.staged_output(out) as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 7. silent overwrite
# ---------------------------------------------------------------------------------------------
def test_case07_rerun_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    _publish(out, {"a": "1"})
    with pytest.raises(OutputError, match="--overwrite"):
        outdir.check_output_dir(out)
    _publish(out, {"a": "2"}, overwrite=True)
    assert (out / "a").read_text() == "2"


def test_case07_single_file_only_overwritten_with_flag_and_only_ours(tmp_path):
    from deltamic_core.io import write_tiff

    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, np.zeros((3, 4, 4), np.uint16))
    with pytest.raises(OutputError, match="--overwrite"):
        outdir.check_output_file(raw)
    with pytest.raises(OutputError, match="not written by deltamic"):
        outdir.check_output_file(raw, overwrite=True)
    ours = tmp_path / "ours.tif"
    write_tiff(ours, np.zeros((3, 4, 4), np.float32), (1, 1, 1))
    outdir.check_output_file(ours, overwrite=True)
    with pytest.raises(OutputError, match="input"):
        outdir.check_output_file(ours, overwrite=True, inputs=[ours])


def test_exchange_keeps_old_or_new_complete(tmp_path):
    """The publish step swaps atomically: no instant without a complete result."""
    out = tmp_path / "out"
    _publish(out, {"a": "old"})
    old_inode = out.stat().st_ino
    _publish(out, {"a": "new"}, overwrite=True)
    assert out.stat().st_ino != old_inode and (out / "a").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_collection_root_files_and_items(tmp_path):
    root = tmp_path / "batch"
    col = outdir.Collection(root).open()
    col.write_text("summary.csv", "a\n")
    col.write_text("summary.csv", "b\n")
    with col.stage_item("item1") as tmp:
        (tmp / "report.json").write_text("{}")
    assert outdir.Collection(root).problem() is None
    outdir.check_output_dir(root, resume=True)
    (root / "stray.txt").write_text("user")
    with pytest.raises(OutputError):
        outdir.check_output_dir(root, resume=True)
    for bad in ("", ".", "..", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            col.item(bad)


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


# ---------------------------------------------------------------------------------------------
# 5. silently wrong measurements
# ---------------------------------------------------------------------------------------------
def _sphere(c, r, s=3):
    m = trimesh.creation.icosphere(subdivisions=s, radius=r)
    m.vertices += np.asarray(c)
    return m


def test_case05_two_cells_without_labels_become_two_cells():
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.mesh import Mesh

    both = trimesh.util.concatenate([_sphere((0, 0, 0), 2.0), _sphere((0, 0, 10), 3.0)])
    mesh, notes = prepare_cells(Mesh(np.asarray(both.vertices), np.asarray(both.faces)))
    assert mesh.n_cells == 2 and any("2 cells" in n for n in notes)
    vols = sorted(np.asarray(measure(mesh)["volume_um3"]).tolist())
    exact = sorted([_sphere((0, 0, 0), 2.0).volume, _sphere((0, 0, 0), 3.0).volume])
    np.testing.assert_allclose(vols, exact, rtol=1e-9)


def test_case05_open_mesh_is_repaired_or_refused():
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.mesh import Mesh

    s = _sphere((0, 0, 0), 2.0)
    one_hole = np.asarray(s.faces)[1:]  # a single missing triangle: fill_holes closes it
    mesh, notes = prepare_cells(Mesh(np.asarray(s.vertices), one_hole))
    assert any("closed the holes" in n for n in notes)
    sph = float(np.asarray(measure(mesh)["sphericity"])[0])
    assert sph <= 1.0
    # a hemisphere (a big hole, no planar patch): refused, never a sphericity > 1
    v = np.asarray(s.vertices)
    f = np.asarray(s.faces)
    keep = np.all(v[f][:, :, 2] > -0.3, axis=1)
    with pytest.raises(ValueError, match="open surface|not closed"):
        prepare_cells(Mesh(v, f[keep]))


def test_case05_overlapping_shells_are_refused():
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.mesh import Mesh

    both = trimesh.util.concatenate([_sphere((0, 0, 0), 3.0), _sphere((0, 0, 2), 3.0)])
    with pytest.raises(ValueError, match="overlap"):
        prepare_cells(Mesh(np.asarray(both.vertices), np.asarray(both.faces)))
    nested = trimesh.util.concatenate([_sphere((0, 0, 0), 3.0), _sphere((0, 0, 0), 1.0)])
    with pytest.raises(ValueError, match="overlap"):
        prepare_cells(Mesh(np.asarray(nested.vertices), np.asarray(nested.faces)))


def test_case05_tiny_seed_refused_and_overlapping_seeds_shrunk():
    from deltamic_core.geometry.validate import check_seed_radii, shrink_overlapping_seeds

    with pytest.raises(ValueError, match="smaller than a voxel"):
        check_seed_radii([2.0, 0.01], (0.5, 0.25, 0.25))
    check_seed_radii([2.0, 0.3], (0.5, 0.25, 0.25))
    c = np.array([[0, 0, 0], [0, 0, 3.0], [0, 0, 20.0]])
    r, n = shrink_overlapping_seeds(c, [2.0, 2.0, 2.0])
    assert n == 2
    np.testing.assert_allclose(r, [1.5, 1.5, 2.0])
    from scipy.spatial.distance import pdist

    d = pdist(c)
    rs = np.add.outer(r, r)[np.triu_indices(3, 1)]
    assert np.all(rs <= d + 1e-12)


# ---------------------------------------------------------------------------------------------
# 6. hang: cost check up front, a Laplacian that scales
# ---------------------------------------------------------------------------------------------
def test_case06_too_many_seeds_refused_with_the_figure():
    from deltamic_core.geometry.validate import check_fit_cost

    with pytest.raises(ValueError, match=r"2\.46 voxels per cell"):
        check_fit_cost((24, 32, 32), n_seeds=10000)
    with pytest.raises(ValueError, match="per voxel"):
        check_fit_cost((24, 32, 32), n_faces=10000 * 1280)
    check_fit_cost((24, 32, 32), n_seeds=10, n_faces=10 * 320)


def test_case06_laplacian_matches_the_definition_and_scales():
    import scipy.sparse as sp

    from deltamic_core.fit.precondition import mesh_laplacian

    s = _sphere((0, 0, 0), 1.0, 2)
    v, f = np.asarray(s.vertices), np.asarray(s.faces)
    lap = mesh_laplacian(v, f).toarray()
    ref = np.zeros_like(lap)  # D - A from the edge list, written out
    for a, b in {tuple(sorted(e)) for t in f for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}:
        ref[a, b] = ref[b, a] = -1
    ref[np.diag_indices_from(ref)] = -ref.sum(1)
    np.testing.assert_array_equal(lap, ref)
    # 200 disjoint copies (the seed-sphere case): block diagonal, the same matrix per copy
    # (speed figures live in benchmarks/, not here)
    big = np.concatenate([f + i * len(v) for i in range(200)])
    L = mesh_laplacian(np.zeros((200 * len(v), 3)), big)
    assert isinstance(L, sp.csr_matrix) and L.shape[0] == 200 * len(v)
    np.testing.assert_array_equal(L[-len(v) :, -len(v) :].toarray(), ref)
    assert L.nnz == 200 * np.count_nonzero(ref)


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


# ---------------------------------------------------------------------------------------------
# 11. API edges
# ---------------------------------------------------------------------------------------------
def test_case11_api_edges():
    import torch

    from deltamic_core.fit import FitConfig, Fitter
    from deltamic_core.geometry import icosphere
    from deltamic_core.psf import GaussianPSF
    from deltamic_core.render import Renderer

    psf = GaussianPSF(sigma_um=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="whole numbers"):
        Renderer((24.5, 32, 32), (1, 1, 1), psf)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Renderer((8, 8, 8), (1, 1, 1), psf, device="cuda")
        with pytest.raises(ValueError, match="no CUDA device"):
            Fitter(np.random.rand(8, 8, 8), (1, 1, 1), icosphere((4, 4, 4), 2, 1), psf, FitConfig(device="cuda"))
    with pytest.raises(ValueError, match="adds up to 0"):
        FitConfig(iterations=0)
    with pytest.raises(ValueError, match="constant"):
        Fitter(np.ones((8, 8, 8)), (1, 1, 1), icosphere((4, 4, 4), 2, 1), psf, FitConfig(iterations=1))
    f = Fitter(
        np.random.default_rng(0).random((12, 12, 12)),
        (1, 1, 1),
        icosphere((6, 6, 6), 3, 1),
        psf,
        FitConfig(iterations=1, levels=(1,)),
    )
    f.run()
    res = f.run()  # a complete fit: returns at once
    assert res.iterations == 1


# =============================================================================================
# the same cases through the command line (in process, tiny inputs)
# =============================================================================================
from deltamic_core.cli import main  # noqa: E402

FIT = ["--iterations", "1", "--levels", "1", "--quiet"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from deltamic_core.io import write_tiff

    d = tmp_path_factory.mktemp("cli10")
    z, y, x = np.meshgrid(*(np.arange(n) for n in (10, 14, 14)), indexing="ij")
    r = np.sqrt((z - 4.5) ** 2 + (y - 6.5) ** 2 + (x - 6.5) ** 2)
    img = (np.exp(-((r - 3.5) ** 2) / 2.0) * 100 + np.random.default_rng(0).poisson(2.0, r.shape)).astype(np.float32)
    tifffile.imwrite(
        d / "good.tif", img, imagej=True, resolution=(1, 1), metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"}
    )
    write_tiff(d / "ours.tif", img, (1, 1, 1))
    (d / "s.csv").write_text("z,y,x,radius\n4.5,6.5,6.5,3\n")
    return d


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_case01_cli_fit_into_the_directory_of_its_input(small, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.tif").write_bytes((small / "good.tif").read_bytes())
    before = _tree(data)
    for extra in ([], ["--overwrite"]):
        rc, _, err = _cli(["fit", data / "image.tif", "--seeds", small / "s.csv", *FIT, "--out", data, *extra], capsys)
        assert rc == 2 and err.count("\n") == 1 and "deltamic: error:" in err
        assert _tree(data) == before
    seg = tmp_path / "seg"
    seg.mkdir()
    from deltamic_core.io import write_tiff

    lab = np.zeros((10, 14, 14), np.uint16)
    lab[2:8, 3:10, 3:10] = 1
    write_tiff(seg / "labels.tif", lab, (1, 1, 1))
    (seg / "measurements.csv").write_text("hand,made\n")
    before = _tree(seg)
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--labels", seg / "labels.tif", *FIT, "--out", seg, "--overwrite"], capsys
    )
    assert rc == 2 and _tree(seg) == before


def test_case02_batch_item_names():
    from deltamic_core.pipeline.batch import expand_items

    items = expand_items(
        [
            "a/.hidden.tif",
            "b/.hidden.tif",
            "x/good.tif",
            "x/good.tif",
            "y/good.tif",
            "z/cells.ome.tif",
            "w/..tif",
            "v/a b?.tif",
        ]
    )
    names = [it.name for it in items]
    assert names == ["hidden", "hidden-2", "good", "good-2", "cells", "item", "a_b_"]
    assert all(n and not n.startswith(".") and "/" not in n for n in names)
    assert items[0].stem == ".hidden"  # {stem} keeps the file's own stem


def test_case03_cli_out_dot_dotdot_fail_before_any_work(small, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    import deltamic_core.fit

    def no_fit(*a, **k):
        raise AssertionError("a fit started before the output location was checked")

    monkeypatch.setattr(deltamic_core.fit, "Fitter", no_fit)
    for out in (".", ".."):
        rc, _, err = _cli(["fit", small / "good.tif", "--seeds", small / "s.csv", *FIT, "--out", out], capsys)
        assert rc == 2 and err.count("\n") == 1 and "AssertionError" not in err
    assert [p.name for p in work.iterdir()] == ["sub"] and list((work / "sub").iterdir()) == []


def test_case07_cli_rerun_needs_overwrite_and_render_keeps_raw_tiff(small, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["fit", small / "good.tif", "--seeds", small / "s.csv", *FIT, "--out", out]
    assert _cli(args, capsys)[0] == 0
    first = _tree(out)
    rc, _, err = _cli(args, capsys)
    assert rc == 2 and "--overwrite" in err and _tree(out) == first
    assert _cli(args + ["--overwrite"], capsys)[0] == 0 and outdir.is_ours(out)
    raw = tmp_path / "raw_data.tif"
    raw.write_bytes((small / "good.tif").read_bytes())
    before = _sha(raw)
    render = ["render", out / "mesh.ply", "--shape", 10, 14, 14, "--spacing", 1, 1, 1, "--out", raw]
    for extra in ([], ["--overwrite"]):
        rc, _, err = _cli(render + extra, capsys)
        assert rc == 2 and _sha(raw) == before
    # case 12: mesh.rec in um with '# units = um'; it reads back as the same mesh
    from deltamic_core.io import read_mesh

    text = (out / "mesh.rec").read_text()
    assert "# units = um" in text and "voxel" not in text
    np.testing.assert_allclose(read_mesh(out / "mesh.rec").verts, read_mesh(out / "mesh.ply").verts)


def test_case04_cli_warns_once_naming_spacing(small, tmp_path, capsys):
    p = tmp_path / "noz.tif"
    tifffile.imwrite(
        p, tifffile.imread(small / "good.tif"), imagej=True, resolution=(1, 1), metadata={"unit": "um", "axes": "ZYX"}
    )
    rc, _, err = _cli(["fit", p, "--seeds", small / "s.csv", *FIT, "--out", tmp_path / "o"], capsys)
    warns = [line for line in err.splitlines() if line.startswith("deltamic: warning:")]
    assert rc == 0 and len(warns) == 1 and "axis z" in warns[0] and "--spacing" in warns[0]
    assert json.loads((tmp_path / "o" / "report.json").read_text())["image"]["spacing_um"] == [1.0, 1.0, 1.0]
    z0 = tmp_path / "z0.tif"
    tifffile.imwrite(
        z0,
        tifffile.imread(small / "good.tif"),
        imagej=True,
        resolution=(1, 1),
        metadata={"spacing": 0.0, "unit": "um", "axes": "ZYX"},
    )
    rc, _, err = _cli(["fit", z0, "--seeds", small / "s.csv", *FIT, "--out", tmp_path / "o0"], capsys)
    assert rc == 2 and "--spacing" in err and not (tmp_path / "o0").exists()
    rc, _, _ = _cli(
        ["fit", z0, "--seeds", small / "s.csv", *FIT, "--spacing", 1, 1, 1, "--out", tmp_path / "o1"], capsys
    )
    assert rc == 0


def test_case05_cli_two_cells_one_ply_and_open_init(small, tmp_path, capsys):
    two = trimesh.util.concatenate([_sphere((4.5, 6.5, 3.5), 2.2, 2), _sphere((4.5, 6.5, 10.0), 2.2, 2)])
    two.export(tmp_path / "two.ply")
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--init", tmp_path / "two.ply", *FIT, "--out", tmp_path / "o"], capsys
    )
    assert rc == 0 and "2 cells" in err
    rows = (tmp_path / "o" / "measurements.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    s = _sphere((4.5, 6.5, 6.5), 3.0, 2)
    v, f = np.asarray(s.vertices), np.asarray(s.faces)
    trimesh.Trimesh(v, f[np.all(v[f][:, :, 0] > 4.0, axis=1)], process=False).export(tmp_path / "open.obj")
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--init", tmp_path / "open.obj", *FIT, "--out", tmp_path / "o2"], capsys
    )
    assert rc == 2 and "open surface" in err and not (tmp_path / "o2").exists()
    (tmp_path / "tiny.csv").write_text("z,y,x,radius\n4.5,6.5,6.5,0.01\n")
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--seeds", tmp_path / "tiny.csv", *FIT, "--out", tmp_path / "o3"], capsys
    )
    assert rc == 2 and "smaller than a voxel" in err
    (tmp_path / "ov.csv").write_text("z,y,x,radius\n4.5,6.5,4.5,3\n4.5,6.5,8.5,3\n")
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--seeds", tmp_path / "ov.csv", *FIT, "--out", tmp_path / "o4"], capsys
    )
    assert rc == 0 and "2 overlapping seed sphere(s) shrunk" in err
    # rendering a mesh of zero area: refused, no blank TIFF
    trimesh.Trimesh(np.full((3, 3), 5.0), [[0, 1, 2]], process=False).export(tmp_path / "flat.obj")
    rc, _, err = _cli(
        ["render", tmp_path / "flat.obj", "--shape", 10, 14, 14, "--spacing", 1, 1, 1, "--out", tmp_path / "blank.tif"],
        capsys,
    )
    assert rc == 2 and not (tmp_path / "blank.tif").exists()


def test_case06_cli_ten_thousand_seeds_refused_at_once(small, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    c = rng.random((10000, 3)) * (9, 13, 13)
    np.savetxt(tmp_path / "many.csv", c, delimiter=",", header="z,y,x", comments="")
    import deltamic_core.geometry

    def no_spheres(*a, **k):
        raise AssertionError("10,000 seed spheres were built before the cost check")

    monkeypatch.setattr(deltamic_core.geometry, "seed_spheres", no_spheres)
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--seeds", tmp_path / "many.csv", *FIT, "--out", tmp_path / "o"], capsys
    )
    assert rc == 2 and "voxels per cell" in err and "AssertionError" not in err


def test_case08_messages_name_cli_options(small, tmp_path, capsys):
    from deltamic_core.cli import cli_terms

    assert "--lr" in cli_terms("fit diverged ... Lower FitConfig.lr or raise FitConfig.lambda_smooth")
    assert "margin_um" not in cli_terms("... Crop the mesh, enlarge the image, or pass a larger margin_um")
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--seeds", small / "s.csv", "--sigma", "1e-6", *FIT, "--out", tmp_path / "o"],
        capsys,
    )
    assert rc == 2 and "--sigma" in err and "max_oversampling" not in err
    (tmp_path / "close.csv").write_text("z,y,x\n4.5,6.5,6.5\n4.5,6.5,6.500001\n")
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--seeds", tmp_path / "close.csv", *FIT, "--out", tmp_path / "o"], capsys
    )
    assert rc == 2 and "FitConfig" not in err and err.count("\n") == 1
    (tmp_path / "big.csv").write_text("z,y,x,radius\n4.5,6.5,6.5,50\n")
    rc, _, err = _cli(
        ["fit", small / "good.tif", "--seeds", tmp_path / "big.csv", *FIT, "--out", tmp_path / "o"], capsys
    )
    assert rc != 0 and "margin_um" not in err and err.count("error") == 1
    two = tmp_path / "two.tif"
    img = tifffile.imread(small / "good.tif")
    tifffile.imwrite(two, np.stack([img, img], 1), imagej=True, metadata={"axes": "ZCYX"})
    rc, _, err = _cli(["fit", two, "--seeds", small / "s.csv", *FIT, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "--channel" in err and "channel=" not in err


def test_case09_truncated_tiff_one_line(small, tmp_path, capsys):
    raw = (small / "good.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) // 2])
    rc, out, err = _cli(["fit", tmp_path / "t.tif", "--seeds", small / "s.csv", *FIT, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("deltamic: error:")


def test_case09_batch_into_read_only_directory_one_line(small, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real_access = os.access
    if os.access(ro, os.W_OK):  # root: simulate what a normal user sees
        monkeypatch.setattr(
            os, "access", lambda p, m, **k: False if Path(p) == ro and m & os.W_OK else real_access(p, m, **k)
        )
    try:
        rc, _, err = _cli(["batch", small / "good.tif", "--seeds", small / "s.csv", *FIT, "--out", ro], capsys)
    finally:
        ro.chmod(0o755)
    assert rc == 2 and err.count("\n") == 1 and "not writable" in err and list(ro.iterdir()) == []


def test_case12_readme_says_what_the_files_hold():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "# units = um" in readme
    assert "voxel units" not in readme.split("## Command line")[1].split("###")[0]


def test_case13_trust_boundary_documented_and_local_cluster_on_loopback(capsys):
    rc = main(["batch", "--help"])
    out = capsys.readouterr().out
    assert rc == 0 and "Trust boundary" in " ".join(out.split())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "trust" in readme.lower() and "127.0.0.1" in readme
    from deltamic_core.pipeline.batch import _connect

    with _connect(None, None, 1, 1) as cl:
        info = cl.scheduler_info()
        addrs = [cl.scheduler.address, *info["workers"]]
    assert addrs and all(a.startswith("tcp://127.0.0.1:") for a in addrs), addrs


# labelled (multi-material) meshes: small holes are filled like those of unlabelled meshes,
# big ones refused; the bundled embryo (one edge where four faces of cell 1 meet, a closed
# pinch) is accepted unchanged
def _labelled_pair():
    from deltamic_core.geometry import meshes_from_labels

    lab = np.zeros((14, 14, 22), np.int32)
    lab[3:11, 3:11, 3:11] = 1
    lab[3:11, 3:11, 11:19] = 2
    return meshes_from_labels(lab, (1.0, 1.0, 1.0), 1.5, shared=True)


def _punch(mesh, faces_to_drop):
    keep = np.ones(len(mesh.faces), bool)
    keep[list(faces_to_drop)] = False
    return mesh.copy(faces=mesh.faces[keep], labels=mesh.labels[keep])


def _closed_oriented(mesh, c):
    from deltamic_core.geometry.ops import orient_outward
    from deltamic_core.geometry.validate import _edge_balance, _outward_faces

    o = orient_outward(mesh)
    f = _outward_faces(o, c)
    _, net = _edge_balance(f, len(o.verts))
    d = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, c2 = np.unique(d, axis=0, return_counts=True)
    return not np.any(net) and not np.any(c2 % 2)


def _watertight(mesh, c):
    """trimesh's own verdict on cell c (a manifold cell): every edge in two faces, consistently wound."""
    sel = (mesh.labels[:, 0] == c) | (mesh.labels[:, 1] == c)
    t = trimesh.Trimesh(mesh.verts, mesh.faces[sel], process=False)
    t.remove_unreferenced_vertices()
    trimesh.repair.fix_winding(t)
    return bool(t.is_watertight and t.is_winding_consistent)


def _star(mesh, vertex):
    return np.flatnonzero(np.any(mesh.faces == vertex, axis=1))


@pytest.mark.parametrize("where", ["outer face", "outer star", "shared face"])
def test_case05_labelled_mesh_small_hole_repaired(where):
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells

    whole = _labelled_pair()
    assert _watertight(whole, 1) and _watertight(whole, 2)
    ref = np.asarray(measure(whole)["volume_um3"])
    lab = whole.labels
    outer = np.flatnonzero((lab.min(axis=1) == 0) & (lab.max(axis=1) == 1))
    shared = np.flatnonzero(lab.min(axis=1) == 1)
    assert len(shared) > 10
    if where == "outer face":
        drop = outer[len(outer) // 2 : len(outer) // 2 + 1]
    elif where == "outer star":
        # every face around one vertex of cell 1's outer surface only
        inner_v = set(np.unique(whole.faces[lab.max(axis=1) == 2]).tolist())
        v = next(int(x) for x in whole.faces[outer].ravel() if int(x) not in inner_v)
        drop = _star(whole, v)
        assert len(drop) >= 4
    else:
        drop = shared[len(shared) // 2 : len(shared) // 2 + 1]
    holed = _punch(whole, drop)
    assert not _watertight(holed, 1)
    fixed, notes = prepare_cells(holed, what="--init mesh 'x.ply'")
    assert len(notes) == 1 and "closed 1 small hole(s)" in notes[0] and "\n" not in notes[0]
    assert _watertight(fixed, 1) and _watertight(fixed, 2)
    vol = np.asarray(measure(fixed)["volume_um3"])
    np.testing.assert_allclose(vol, ref, rtol=2e-3)
    if where == "shared face":
        # the patch of the interface is filled once, as an interface of both cells
        assert len(fixed.faces) == len(whole.faces)
        assert np.count_nonzero(fixed.labels.min(axis=1) == 1) == len(shared)


def test_case05_labelled_mesh_big_hole_refused():
    from deltamic_core.geometry.validate import prepare_cells

    whole = _labelled_pair()
    c = whole.verts[whole.faces].mean(axis=1)
    lab = whole.labels
    cap = np.flatnonzero((lab.max(axis=1) == 1) & (lab.min(axis=1) == 0) & (c[:, 2] < 5.0))
    assert len(cap) > 20
    with pytest.raises(ValueError, match="surface of cell 1 is not closed") as err:
        prepare_cells(_punch(whole, cap), what="--init mesh 'x.ply'")
    assert "\n" not in str(err.value) and "--init mesh 'x.ply'" in str(err.value)


def test_case05_bundled_embryo_accepted_unchanged():
    from deltamic_core.geometry import measure
    from deltamic_core.geometry.validate import prepare_cells
    from deltamic_core.io import read_mesh

    m = read_mesh(Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec")
    out, notes = prepare_cells(m)
    assert out is m and notes == []
    for c in (1, 2, 3):
        assert _closed_oriented(m, c)
    # the divergence-theorem volumes agree with a voxelisation of each cell (independent)
    vol = np.asarray(measure(m)["volume_um3"])
    for c, v in zip((1, 2, 3), vol):
        from deltamic_core.geometry.ops import orient_outward
        from deltamic_core.geometry.validate import _outward_faces

        o = orient_outward(m)
        t = trimesh.Trimesh(o.verts, _outward_faces(o, c), process=False)
        t.remove_unreferenced_vertices()
        pts = np.random.default_rng(c).uniform(t.bounds[0], t.bounds[1], (20000, 3))
        import gpytoolbox

        inside = np.abs(gpytoolbox.winding_number(pts, t.vertices, t.faces.astype(np.int32))) > 0.5
        est = inside.mean() * np.prod(t.bounds[1] - t.bounds[0])
        assert abs(est - v) < 0.03 * v, (c, est, v)


def test_case05_cli_target_mesh_bundled_sample(tmp_path, capsys):
    rec = Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec"
    rc = main(
        [
            "fit",
            "--target-mesh",
            str(rec),
            "--target-size",
            "10",
            "--spacing",
            "0.6",
            "0.6",
            "0.6",
            "--sigma",
            "1.2",
            "--edge",
            "1.2",
            "--iterations",
            "2",
            "--levels",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "measurements.csv").is_file()
