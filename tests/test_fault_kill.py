"""Issue 10 fault test: SIGKILL at random points of the write of a fit and of a batch.

The run is a real ``deltamic`` process (``python -m deltamic_core.cli``) in its own process
group; the test hook ``DELTAMIC_TEST_KILL_AT=n`` (see :func:`deltamic_core.io.outdir.fault_point`)
SIGKILLs the group at its n-th write step (a file written, renamed, a directory created or
swapped), n drawn at random over all the steps of an uninterrupted run. After every kill:

- the output is either absent (first run), the complete old result or the complete new one
  (its manifest matches its contents, report.json present);
- the inputs are untouched (hashes);
- the next run (with --overwrite for fit; a plain rerun resumes a batch) succeeds.

``DELTAMIC_FAULT_KILLS`` (default 50 for the fit, 12 for the batch, whose every run starts a
dask cluster) sets how many kill points are tried.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deltamic_core.io import outdir, write_tiff

N_FIT = int(os.environ.get("DELTAMIC_FAULT_KILLS", "50"))
N_BATCH = int(os.environ.get("DELTAMIC_FAULT_KILLS_BATCH", "12"))
TABLE: dict = {}


def _hash_tree(paths) -> dict:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _env(**extra):
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}})
    env.pop("DELTAMIC_TEST_KILL_AT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(args, cwd, **env):
    return subprocess.run(
        [sys.executable, "-m", "deltamic_core.cli", *map(str, args)],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault")
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(n) for n in (10, 14, 14)), indexing="ij")
    r = np.sqrt((z - 4.5) ** 2 + (y - 6.5) ** 2 + (x - 6.5) ** 2)
    img = np.exp(-((r - 3.5) ** 2) / 2.0) * 100 + rng.poisson(2.0, r.shape)
    write_tiff(d / "a.tif", img.astype(np.float32), (1.0, 1.0, 1.0))
    write_tiff(d / "b.tif", img[:, ::-1].astype(np.float32), (1.0, 1.0, 1.0))
    with open(d / "seeds.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["z", "y", "x", "radius"], [4.5, 6.5, 6.5, 3.0]])
    return d


def _complete(d: Path) -> bool:
    return d.is_dir() and outdir.is_ours(d) and (d / "report.json").is_file()


FIT_ARGS = ["--seeds", "seeds.csv", "--iterations", "1", "--levels", "1", "--quiet"]


def _steps(cmd, cwd) -> int:
    log = Path(cwd) / "steps.log"
    log.unlink(missing_ok=True)
    r = _run(cmd, cwd, DELTAMIC_TEST_FAULT_LOG=log)
    assert r.returncode == 0, r.stderr
    n = len(log.read_text().splitlines())
    log.unlink()
    return n


def test_sigkill_during_fit_write(inputs, tmp_path):
    work = tmp_path
    for f in ("a.tif", "seeds.csv"):
        (work / f).write_bytes((inputs / f).read_bytes())
    before = _hash_tree([work / "a.tif", work / "seeds.csv"])
    cmd = ["fit", "a.tif", *FIT_ARGS, "--out", "out", "--overwrite"]
    n_steps = _steps(cmd, work)  # also leaves a complete first result
    assert n_steps >= 5 and _complete(work / "out")
    rng = random.Random(10)
    points = [rng.randint(1, n_steps) for _ in range(N_FIT)]
    lose_nothing = 0
    for i, k in enumerate(points):
        old = json.loads((work / "out" / "report.json").read_text()) if (work / "out").exists() else None
        r = _run(cmd, work, DELTAMIC_TEST_KILL_AT=k, DELTAMIC_TEST_KILL_GROUP=1)
        assert r.returncode == -9, (k, r.returncode, r.stderr[-500:])
        ok = _complete(work / "out") and _hash_tree([work / "a.tif", work / "seeds.csv"]) == before
        ok = ok and "Traceback" not in r.stderr and old is not None
        r2 = None
        if i % 5 == 4 or i == len(points) - 1:
            # the next run succeeds, sweeping what the killed ones left (in between, the next
            # killed run starts from the state the previous kill left: also a "next run")
            r2 = _run(cmd, work)
            ok = ok and r2.returncode == 0 and _complete(work / "out")
            leftovers = [p.name for p in work.iterdir() if ".partial-" in p.name]
            ok = ok and not leftovers
        lose_nothing += ok
        assert ok, (k, r2 and r2.returncode, r2 and r2.stderr[-800:])
    TABLE["fit: SIGKILL during the write"] = (len(points), lose_nothing)
    print(f"fit: {len(points)} kills over {n_steps} write steps, {lose_nothing} lost nothing")


def test_sigkill_during_batch_write(inputs, tmp_path):
    work = tmp_path
    for f in ("a.tif", "b.tif", "seeds.csv"):
        (work / f).write_bytes((inputs / f).read_bytes())
    names = [work / "a.tif", work / "b.tif", work / "seeds.csv"]
    before = _hash_tree(names)
    cmd = ["batch", "a.tif", "b.tif", *FIT_ARGS, "--out", "res", "--workers", "1"]
    n_steps = _steps(cmd, work)
    assert (work / "res" / "a").is_dir() and _complete(work / "res" / "a") and _complete(work / "res" / "b")
    rng = random.Random(11)
    lose_nothing = 0
    for i in range(N_BATCH):
        # remove one finished item (through the tool's own rule) so the rerun has writing to do
        victim = work / "res" / ("a" if i % 2 else "b")
        outdir.remove_owned(victim)
        k = rng.randint(1, n_steps)
        r = _run(cmd, work, DELTAMIC_TEST_KILL_AT=k, DELTAMIC_TEST_KILL_GROUP=1)
        other = work / "res" / ("b" if i % 2 else "a")
        ok = _complete(other) and _hash_tree(names) == before
        ok = ok and (
            _complete(victim)
            or not victim.exists()
            or [p.name for p in victim.iterdir()] == []
            or (victim / "error.txt").is_file()
        )
        r2 = _run(cmd, work)
        ok = ok and r2.returncode == 0 and _complete(victim) and _complete(other)
        ok = ok and outdir.Collection(work / "res").problem() is None
        lose_nothing += ok
        assert ok, (k, r.returncode, r2.returncode, r2.stderr[-800:])
    TABLE["batch: SIGKILL during the write"] = (N_BATCH, lose_nothing)
    print(f"batch: {N_BATCH} kills over {n_steps} write steps, {lose_nothing} lost nothing")
