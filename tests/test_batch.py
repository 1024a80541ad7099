"""dask batches: items run in worker processes, failures are isolated, reruns resume."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import tifffile
import trimesh

from deltamic_core.cli import build_parser, job_from_args, main
from deltamic_core.mesh import Mesh
from deltamic_core.pipeline import render_mesh_image
from deltamic_core.pipeline.batch import BatchItem, expand_items, fit_item, format_summary, run_tasks
from deltamic_core.psf import GaussianPSF

SPACING = (1.0, 0.6, 0.6)
SHAPE = (12, 20, 20)


@pytest.fixture(scope="module")
def client():
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two small sphere images with their seeds, and one broken 'image'."""
    d = tmp_path_factory.mktemp("inputs")
    centre = 0.5 * (np.asarray(SHAPE) - 1) * SPACING
    for name, radius in (("small", 2.6), ("large", 3.2)):
        s = trimesh.creation.icosphere(subdivisions=2, radius=radius)
        img = render_mesh_image(Mesh(s.vertices + centre, s.faces), SHAPE, SPACING, GaussianPSF(SPACING))
        tifffile.imwrite(
            d / f"{name}.tif",
            img,
            imagej=True,
            resolution=(1 / SPACING[2], 1 / SPACING[1]),
            metadata={"spacing": SPACING[0], "unit": "um", "axes": "ZYX"},
        )
    (d / "broken.tif").write_bytes(b"II*\x00 definitely not a TIFF")
    for name in ("small", "large", "broken"):
        with open(d / f"{name}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["z", "y", "x", "radius"], [*centre, 2.0]])
    return d


def _fit_args(out, d, threads):
    return build_parser().parse_args(
        [
            "batch",
            str(d / "small.tif"),
            str(d / "large.tif"),
            str(d / "broken.tif"),
            "--out",
            str(out),
            "--seeds",
            str(d / "{stem}.csv"),
            "--iterations",
            "12",
            "--levels",
            "1",
            "--edge",
            "1.0",
            "--quiet",
            "--threads-per-worker",
            str(threads),
        ]
    )


def test_batch_isolates_a_failure_and_resumes(client, inputs, tmp_path, capsys):
    out = tmp_path / "batch"
    args = _fit_args(out, inputs, threads=2)
    items = expand_items(args.inputs)
    assert [it.name for it in items] == ["small", "large", "broken"]
    res = run_tasks(
        fit_item, items, out, kwargs={"job": job_from_args(args)}, client=client, threads_per_worker=2, log=None
    )
    status = {r["item"]: r for r in res}
    assert [status[n]["status"] for n in ("small", "large", "broken")] == ["ok", "ok", "failed"]
    for n in ("small", "large"):
        assert (out / n / "report.json").is_file()
        # inside the worker: torch threads as asked, OpenMP pinned to one thread at start-up
        assert status[n]["torch_threads"] == 2
        assert status[n]["omp_num_threads"] == "1"
        assert status[n]["pid"] != os.getpid()
    err = (out / "broken" / "error.txt").read_text().splitlines()
    assert "broken.tif" in err[0] and status["broken"]["error"] == err[0]
    assert not (out / "broken" / "report.json").exists()
    with open(out / "summary.csv") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["ok", "ok", "failed"]
    assert "2 done, 0 skipped, 1 failed" in format_summary(res)
    # the two fits found the two radii (volumes in the right order)
    import json

    vols = [json.loads((out / n / "report.json").read_text())["cells"][0]["volume_um3"] for n in ("small", "large")]
    assert vols[0] < vols[1]

    # rerun through the command line on the same scheduler: finished items untouched
    stamps = {n: (out / n / "report.json").stat().st_mtime_ns for n in ("small", "large")}
    rc = main(
        [
            "batch",
            str(inputs / "small.tif"),
            str(inputs / "large.tif"),
            str(inputs / "broken.tif"),
            "--out",
            str(out),
            "--seeds",
            str(inputs / "{stem}.csv"),
            "--iterations",
            "12",
            "--levels",
            "1",
            "--edge",
            "1.0",
            "--quiet",
            "--scheduler",
            client.scheduler.address,
        ]
    )
    stdout = capsys.readouterr().out
    assert rc != 0  # the broken item still fails
    assert "0 done, 2 skipped, 1 failed" in stdout
    assert {n: (out / n / "report.json").stat().st_mtime_ns for n in ("small", "large")} == stamps


def test_time_points_of_a_stack_become_items(tmp_path):
    stack = np.random.default_rng(0).random((3, 5, 6, 7)).astype(np.float32)
    tifffile.imwrite(tmp_path / "movie.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "still.tif", stack[0], imagej=True, metadata={"axes": "ZYX"})
    items = expand_items([tmp_path / "movie.tif", tmp_path / "still.tif", tmp_path / "missing.tif"])
    assert [(it.name, it.frame) for it in items] == [
        ("movie_t0000", 0),
        ("movie_t0001", 1),
        ("movie_t0002", 2),
        ("still", None),
        ("missing", None),
    ]
    assert isinstance(items[0], BatchItem) and items[0].stem == "movie"


def test_same_name_from_two_folders_gets_a_suffix(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "img.tif").write_bytes(b"")
    items = expand_items([tmp_path / "a" / "img.tif", tmp_path / "b" / "img.tif", tmp_path / "a" / "img.tif"])
    assert [it.name for it in items] == ["img", "img-2"]  # the same file twice is one item
