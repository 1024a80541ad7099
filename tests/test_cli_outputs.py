"""The command line keeps a user's data: outputs next to or around the inputs, reruns, bad
spacing, open or overlapping meshes, too many seeds, read-only folders; each refusal is one
line naming a command-line option.

The number in a test's name is the case of the data-safety issue (10) it guards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import trimesh

from deltamic_core.io import outdir
from file_helpers import sha256 as _sha
from file_helpers import tree_digest as _tree


def _sphere(c, r, s=3):
    m = trimesh.creation.icosphere(subdivisions=s, radius=r)
    m.vertices += np.asarray(c)
    return m


# =============================================================================================
# in process, tiny inputs
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
