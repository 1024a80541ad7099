"""The ``deltamic`` command line: render -> fit round trip, synthetic benchmark, bad inputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import trimesh

from deltamic_core.cli import main

SPACING = (1.0, 0.75, 0.75)  # anisotropic, as real stacks are; coarse to keep the test fast
SHAPE = (12, 16, 24)
# two cells: centres (um, image frame) and radii
CENTRES = np.array([[5.5, 6.0, 5.5], [5.5, 6.0, 12.0]])
RADII = np.array([2.5, 2.0])


def _sphere(centre, radius, subdivisions=3):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    m.vertices += np.asarray(centre)
    return m


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _leftovers(root: Path):
    """Hidden staging directories/files a failed run must not leave behind."""
    return [p.name for p in root.iterdir() if ".partial-" in p.name or ".tmp" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """Two spheres as one .obj (um), its rendered image, and a seeds CSV (centres only)."""
    d = tmp_path_factory.mktemp("truth")
    meshes = [_sphere(c, r) for c, r in zip(CENTRES, RADII)]
    trimesh.util.concatenate(meshes).export(d / "cells.obj")
    with open(d / "seeds.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["z", "y", "x"])
        w.writerows(CENTRES.tolist())
    return {
        "dir": d,
        "mesh": d / "cells.obj",
        "seeds": d / "seeds.csv",
        "volumes": np.array([m.volume for m in meshes]),
    }


@pytest.fixture(scope="module")
def rendered(truth, tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    img = d / "cells.tif"
    # default PSF: Gaussian, sigma = one voxel per axis
    rc = main(
        ["render", str(truth["mesh"]), "--shape", *map(str, SHAPE), "--spacing", *map(str, SPACING), "--out", str(img)]
    )
    assert rc == 0
    return img


def test_render_writes_a_calibrated_membrane_image(rendered):
    from deltamic_core.io import read_image

    image, meta = read_image(rendered)
    assert image.shape == SHAPE
    assert np.allclose(meta.spacing_um, SPACING)
    assert np.all(np.isfinite(image)) and image.min() >= 0
    # membranes are bright, the cell centres dark
    z, y, x = (CENTRES[0] / SPACING).round().astype(int)
    zm, ym, xm = ((CENTRES[0] + [0, 0, -RADII[0]]) / SPACING).round().astype(int)
    assert image[zm, ym, xm] > 2 * image[z, y, x]


@pytest.fixture(scope="module")
def fitted(truth, rendered, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "result"
    # seeds without radii (estimated from the image), default PSF; coarse seed meshes, few
    # iterations, one resolution level: the smallest fit that still has to get the shapes right
    rc = main(
        [
            "fit",
            str(rendered),
            "--seeds",
            str(truth["seeds"]),
            "--edge",
            "1.0",
            "--iterations",
            "30",
            "--levels",
            "1",
            "--quiet",
            "--mechanics",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


def test_fit_from_seeds_recovers_both_cells(fitted, truth):
    from deltamic_core.io import read_image, read_mesh

    names = {p.name for p in fitted.iterdir()}
    assert {"mesh.rec", "mesh.ply", "labels.tif", "measurements.csv", "contacts.csv", "report.json"} <= names
    mesh = read_mesh(fitted / "mesh.rec")
    assert mesh.labels is not None and set(np.unique(mesh.labels)) == {0, 1, 2}
    labels, _ = read_image(fitted / "labels.tif")
    assert labels.shape == SHAPE
    assert set(np.unique(labels).astype(int)) == {0, 1, 2}
    # label i is the cell of seed i: the seed's voxel carries it
    for i, c in enumerate(CENTRES, start=1):
        assert labels[tuple((c / SPACING).round().astype(int))] == i
    with open(fitted / "measurements.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["cell"]) for r in rows] == [1, 2]
    vols = np.array([float(r["volume_um3"]) for r in rows])
    np.testing.assert_allclose(vols, truth["volumes"], rtol=0.05)
    cents = np.array([[float(r[f"centroid_{a}_um"]) for a in "zyx"] for r in rows])
    np.testing.assert_allclose(cents, CENTRES, atol=0.25)
    rep = json.loads((fitted / "report.json").read_text())
    for key in ("loss_history", "timings", "psf", "photometric", "backend", "versions", "command", "cells"):
        assert key in rep
    assert rep["loss_history"][-1] < rep["loss_history"][0]
    assert rep["command"][:2] == ["deltamic", "fit"]


def test_fit_with_mechanics_writes_the_mechanics_tables(fitted):
    from deltamic_core.io import read_mesh

    with open(fitted / "mechanics.csv") as fh:
        rows = list(csv.DictReader(fh))
    pairs = {(int(r["cell_a"]), int(r["cell_b"])) for r in rows}
    mesh = read_mesh(fitted / "mesh.rec")
    assert pairs == {tuple(sorted(p)) for p in mesh.labels.tolist()}
    with open(fitted / "curvature.csv") as fh:
        assert len(list(csv.DictReader(fh))) >= len(mesh.verts)
    rep = json.loads((fitted / "report.json").read_text())
    assert "mechanics" in rep and "pressures" in rep["mechanics"]
    assert {"junctions.csv", "curvature.csv", "mechanics.csv"} <= set(rep["files"])


@pytest.mark.slow
def test_target_mesh_benchmark_reports_surface_distance(tmp_path, capsys):
    ell = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    ell.vertices *= [1.0, 0.8, 0.6]
    ell.export(tmp_path / "ellipsoid.obj")
    out = tmp_path / "bench"
    rc, stdout, _ = _run(
        [
            "fit",
            "--target-mesh",
            tmp_path / "ellipsoid.obj",
            "--target-size",
            "5",
            "--spacing",
            "0.6",
            "0.6",
            "0.6",
            "--edge",
            "0.8",
            "--iterations",
            "30",
            "--levels",
            "1",
            "--quiet",
            "--out",
            out,
        ],
        capsys,
    )
    assert rc == 0
    assert "surface distance" in stdout
    rep = json.loads((out / "report.json").read_text())
    d = rep["surface_distance"]
    # the fit must do much better than the starting sphere, and land within a voxel
    assert d["mean_um"] < 0.5 * d["initial_sphere"]["mean_um"]
    assert d["mean_voxels"] < 0.5
    assert d["hausdorff_um"] >= d["mean_um"]
    assert (out / "image.tif").is_file() and (out / "target.ply").is_file()


def test_render_interior_stain_fills_the_cells(truth, tmp_path, capsys):
    from deltamic_core.io import read_image

    out = tmp_path / "interior.tif"
    rc, _, _ = _run(
        ["render", truth["mesh"], "--shape", *SHAPE, "--spacing", *SPACING, "--stain", "interior", "--out", out], capsys
    )
    assert rc == 0
    image, _ = read_image(out)
    # one unit of light per um^3 of cell: the image's integral is the cells' volume (trimesh's)
    total = float(image.sum()) * float(np.prod(SPACING))
    assert total == pytest.approx(truth["volumes"].sum(), rel=5e-3)
    z, y, x = (CENTRES[0] / SPACING).round().astype(int)
    assert image[z, y, x] > 0.8 * image.max()  # the centre is bright, not a dark hole


def test_target_mesh_interior_stain_fits_the_image_of_that_stain(tmp_path, capsys):
    # the target is a sphere, so the fit starts on the truth and must stay there; when the
    # target was rendered as a membrane image and fitted as an interior it moved ~1.5 voxels
    _sphere((4.0, 4.0, 4.0), 2.0).export(tmp_path / "ball.obj")
    out = tmp_path / "fit"
    argv = ["fit", "--target-mesh", tmp_path / "ball.obj", "--shape", 16, 32, 32, "--spacing", 0.5, 0.25, 0.25]
    argv += ["--stain", "interior", "--psf", "gaussian", "--sigma", 0.3, 0.12, 0.12, "--iterations", 5]
    rc, _, err = _run([*argv, "--quiet", "--out", out], capsys)
    assert rc == 0, err
    d = json.loads((out / "report.json").read_text())["surface_distance"]
    assert d["mean_voxels"] < 0.15, d


# ----------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = np.random.default_rng(0).random((8, 10, 12)).astype(np.float32)
    tifffile.imwrite(
        d / "good.tif", good, imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 0.8, "unit": "um", "axes": "ZYX"}
    )
    tifffile.imwrite(d / "flat2d.tif", good[0])
    nan = good.copy()
    nan[2, 3, 4] = np.nan
    tifffile.imwrite(d / "nan.tif", nan)
    (d / "garbage.tif").write_bytes(b"this is not a tiff file at all")
    (d / "seeds_nocol.csv").write_text("a,b,c\n1,2,3\n")
    (d / "seeds_text.csv").write_text("z,y,x\n1,2,banana\n")
    (d / "seeds_empty.csv").write_text("")
    (d / "seeds_ok.csv").write_text("z,y,x\n3,2.5,3\n")
    (d / "seeds_outside.csv").write_text("z,y,x\n3,2.5,300\n")
    far = _sphere((100.0, 100.0, 100.0), 2.0, subdivisions=1)
    far.export(d / "far.obj")
    return d


# case -> (argv, a word the message must contain: it must fail for the right reason)
BAD_CASES = {
    "missing image": (["fit", "{d}/nope.tif", "--seeds", "{d}/seeds_ok.csv"], "no such file"),
    "unreadable image": (["fit", "{d}/garbage.tif", "--seeds", "{d}/seeds_ok.csv"], "garbage.tif"),
    "2D image": (["fit", "{d}/flat2d.tif", "--seeds", "{d}/seeds_ok.csv", "--spacing", "1", "1", "1"], "2D"),
    "NaN image": (["fit", "{d}/nan.tif", "--seeds", "{d}/seeds_ok.csv", "--spacing", "1", "1", "1"], "NaN"),
    "mesh outside image": (["fit", "{d}/good.tif", "--init", "{d}/far.obj"], "outside the image"),
    "seed outside image": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_outside.csv"], "outside the image"),
    "CSV without z,y,x": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_nocol.csv"], "lacks column"),
    "CSV with text": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_text.csv"], "line 2"),
    "empty CSV": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_empty.csv"], "empty"),
    "missing seeds file": (["fit", "{d}/good.tif", "--seeds", "{d}/none.csv"], "no such file"),
    "no initial mesh": (["fit", "{d}/good.tif"], "exactly one of"),
    "two initial meshes": (
        ["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--init", "{d}/far.obj"],
        "exactly one of",
    ),
    "unknown option": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--colour", "red"], "--colour"),
    "zero spacing": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--spacing", "0", "1", "1"], "positive"),
    "negative spacing": (["render", "{d}/far.obj", "--shape", "8", "8", "8", "--spacing", "1", "-1", "1"], "positive"),
    "render mesh outside": (
        ["render", "{d}/far.obj", "--shape", "8", "8", "8", "--spacing", "1", "1", "1"],
        "outside the image",
    ),
    "gibson-lanni without optics": (
        ["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--psf", "gibson-lanni"],
        "--na",
    ),
    "unknown loss": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--loss", "l7"], "l7"),
    "no command": ([], "command is required"),
    "iterations not one per level": (
        ["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--iterations", "5", "6"],
        "--iterations",
    ),
    "levels not ending at 1": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--levels", "2"], "--levels"),
    "track with --frame": (["track", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--frame", "0"], "--frame"),
    "frame of a 3D image": (
        ["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--frame", "0"],
        "not a time series",
    ),
    "cuda without a GPU": (["fit", "{d}/good.tif", "--seeds", "{d}/seeds_ok.csv", "--device", "cuda"], "cuda"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gives_one_line_error_and_no_output(case, bad_files, tmp_path, capsys):
    if case == "cuda without a GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    argv, expected = BAD_CASES[case]
    out = tmp_path / "out.tif" if argv and argv[0] == "render" else tmp_path / "out"
    argv = [a.format(d=bad_files) for a in argv]
    if argv:
        argv += ["--out", str(out)]
    rc, stdout, stderr = _run(argv, capsys)
    assert rc != 0
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("deltamic: error: ")]
    assert len(errors) == 1, stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in stderr
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_error_message_names_the_problem(bad_files, tmp_path, capsys):
    rc, _, err = _run(
        ["fit", f"{bad_files}/good.tif", "--init", f"{bad_files}/far.obj", "--out", tmp_path / "o"], capsys
    )
    assert rc != 0 and "outside the image" in err
    rc, _, err = _run(
        ["fit", f"{bad_files}/nan.tif", "--seeds", f"{bad_files}/seeds_ok.csv", "--out", tmp_path / "o"], capsys
    )
    assert "NaN" in err
    rc, _, err = _run(
        ["fit", f"{bad_files}/good.tif", "--seeds", f"{bad_files}/seeds_text.csv", "--out", tmp_path / "o"], capsys
    )
    assert "line 2" in err


def test_debug_shows_the_traceback(bad_files, tmp_path, capsys):
    rc, _, err = _run(
        ["--debug", "fit", f"{bad_files}/nope.tif", "--seeds", f"{bad_files}/seeds_ok.csv", "--out", tmp_path / "o"],
        capsys,
    )
    assert rc != 0 and "Traceback" in err


def test_refuses_to_overwrite_a_foreign_directory(bad_files, tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    rc, _, err = _run(
        ["fit", f"{bad_files}/good.tif", "--seeds", f"{bad_files}/seeds_ok.csv", "--out", precious], capsys
    )
    assert rc != 0 and "holds files deltamic did not write" in err
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_seed_radius_estimate_finds_the_membrane(rendered):
    from deltamic_core.io import read_image
    from deltamic_core.pipeline import estimate_seed_radii

    image, _ = read_image(rendered)
    blur = SPACING  # the default PSF the image was rendered with
    r = estimate_seed_radii(image, SPACING, CENTRES, blur_um=blur)
    # sub-voxel: the blur's inward shift of the shell-profile peak is corrected
    np.testing.assert_allclose(r, RADII, atol=0.1)
    noisy = np.random.default_rng(0).poisson(image / image.max() * 20).astype(np.float32)
    np.testing.assert_allclose(estimate_seed_radii(noisy, SPACING, CENTRES, blur_um=blur), RADII, atol=0.25)
    # without a membrane peak (flat noise) the fallback is a third of the seed spacing
    flat = np.random.default_rng(1).random(image.shape).astype(np.float32)
    spacing_between = np.linalg.norm(CENTRES[1] - CENTRES[0])
    assert np.all(estimate_seed_radii(flat, SPACING, CENTRES) <= 0.45 * spacing_between)


def test_installed_script_smoke(bad_files, tmp_path):
    exe = shutil.which("deltamic", path=os.path.dirname(sys.executable))
    assert exe is not None, "the deltamic console script is not installed"
    ok = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "deltamic" in ok.stdout
    bad = subprocess.run(
        [
            exe,
            "fit",
            str(bad_files / "nope.tif"),
            "--seeds",
            str(bad_files / "seeds_ok.csv"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("deltamic: error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_track_follows_a_growing_cell_and_resumes(tmp_path, capsys):
    spacing, shape = (1.0, 0.75, 0.75), (12, 16, 16)
    centre = np.array([5.5, 5.6, 5.6])
    radii = [2.2, 2.45]  # a growth the default step size covers in 25 iterations
    from deltamic_core.io import write_tiff
    from deltamic_core.mesh import Mesh
    from deltamic_core.pipeline import render_mesh_image
    from deltamic_core.psf import GaussianPSF

    frames = []
    for r in radii:
        s = _sphere(centre, r)
        frames.append(render_mesh_image(Mesh(s.vertices, s.faces), shape, spacing, GaussianPSF(spacing)))
    write_tiff(tmp_path / "movie.tif", np.stack(frames), spacing, axes="TZYX")
    (tmp_path / "seeds.csv").write_text("z,y,x,radius\n5.5,5.6,5.6,2.0\n")
    out = tmp_path / "track"
    argv = [
        "track",
        tmp_path / "movie.tif",
        "--seeds",
        tmp_path / "seeds.csv",
        "--edge",
        "1.0",
        "--iterations",
        "25",
        "--levels",
        "1",
        "--quiet",
        "--out",
        out,
    ]
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0, stdout
    assert (out / "t0000" / "report.json").is_file() and (out / "t0001" / "report.json").is_file()
    with open(out / "tracks.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["cell"]), int(r["t"])) for r in rows] == [(1, 0), (1, 1)]
    vols = [float(r["volume_um3"]) for r in rows]
    truth = [_sphere(centre, r).volume for r in radii]
    np.testing.assert_allclose(vols, truth, rtol=0.08)
    # a rerun reuses the finished frames instead of fitting them again
    stamp = (out / "t0001" / "report.json").stat().st_mtime_ns
    rc, _, _ = _run(argv, capsys)
    assert rc == 0
    assert (out / "t0001" / "report.json").stat().st_mtime_ns == stamp
    rep = json.loads((out / "report.json").read_text())
    assert [f.get("resumed", False) for f in rep["frames"]] == [True, True]


def test_garbage_collector_is_settled_only_in_the_console_script(tmp_path):
    """The console script freezes the imports' objects and raises the collector's thresholds
    (cli._settle_heap) and asks for passive OpenMP waiting unless the user chose a policy
    (cli._passive_threads); a caller's main([...]) in its own process (a test runner, a
    notebook) must keep its garbage collector as it was."""
    import gc

    from deltamic_core import cli

    before = (gc.get_freeze_count(), gc.get_threshold())
    assert cli.main(["fit", str(tmp_path / "missing.tif"), "--seeds", "x.csv", "--out", str(tmp_path / "o")]) != 0
    assert (gc.get_freeze_count(), gc.get_threshold()) == before
    code = (
        "import gc, sys\n"
        "from deltamic_core import cli\n"
        "sys.argv = ['deltamic', 'fit', sys.argv[1], '--seeds', 'x.csv', '--out', sys.argv[2]]\n"
        "cli.main()\n"
        "import os\n"
        "print(gc.get_freeze_count() > 0, gc.get_threshold()[0], os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "missing.tif"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.stdout.split() == ["True", "20000", "PASSIVE"], out.stderr[-1000:]
    mine = subprocess.run(  # a policy the user chose is kept
        [sys.executable, "-c", code, str(tmp_path / "missing.tif"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
    )
    assert mine.stdout.split()[-1] == "ACTIVE", mine.stderr[-1000:]
