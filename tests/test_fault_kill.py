"""Issue 10 fault test: SIGKILL at random points of the write of a fit and of a batch.

Every run is a real ``deltamic`` process in its own session and process group: the first
(uninterrupted, counting the write steps) is ``python -m deltamic_core.cli``; the killed runs
and the reruns are forked, through multiprocessing's forkserver, from a server that has already
imported the package (``deltamic_core.cli.main`` then runs exactly as the console script does;
the fork only saves the interpreter start and the imports, most of a run's cost). The test hook
``DELTAMIC_TEST_KILL_AT=n`` (see :func:`deltamic_core.io.outdir.fault_point`) SIGKILLs the group
at its n-th write step (a file written, renamed, a directory created or swapped), n drawn at
random over all the steps of an uninterrupted run. After every kill:

- the output is either absent (first run), the complete old result or the complete new one
  (its manifest matches its contents, report.json present);
- the inputs are untouched (hashes);
- the next run (with --overwrite for fit; a plain rerun resumes a batch) succeeds.

The batch's kills run its dask tasks on a worker thread of the killed process
(``DELTAMIC_TEST_BATCH_IN_PROCESS=1``: the same tasks, item writes and collection writes, no
worker processes to start); a few more kills use the default cluster of worker processes, the
writer then being a worker process in the killed group.

``DELTAMIC_FAULT_KILLS`` / ``DELTAMIC_FAULT_KILLS_BATCH`` (default 50 each) and
``DELTAMIC_FAULT_KILLS_BATCH_PROCESSES`` (default 2) set how many kill points are tried.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deltamic_core.io import outdir, write_tiff
from report_helpers import say as _say

N_FIT = int(os.environ.get("DELTAMIC_FAULT_KILLS", "50"))
N_BATCH = int(os.environ.get("DELTAMIC_FAULT_KILLS_BATCH", "50"))
N_BATCH_PROCESSES = int(os.environ.get("DELTAMIC_FAULT_KILLS_BATCH_PROCESSES", "2"))
TABLE: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _table(request):
    """The table of cases (tried / lost nothing) in the test report, also without ``-s``."""
    t0 = time.perf_counter()
    yield
    lines = [f"issue 10 fault test: {k}: {n} tried, {ok} lost nothing" for k, (n, ok) in TABLE.items()]
    _say(request.config, lines + [f"issue 10 fault test: {time.perf_counter() - t0:.0f} s"])


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


# what a fit or a batch imports on its way (so the forked runs do not import it again)
PRELOAD = [
    "deltamic_core.cli",
    "deltamic_core.pipeline.run",
    "deltamic_core.pipeline.batch",
    "deltamic_core.fit",
    "deltamic_core.render",
    "deltamic_core.geometry",
    "distributed",
    "trimesh",
    "tifffile",
]


class _Forked:
    """Result of one forked run: returncode (-9 after SIGKILL) and stderr."""

    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _forked_main(args, cwd, env, err_path):
    # a new session: the kill hook's killpg takes this run (and its threads) only
    os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.dup2(fd, 1)
    from deltamic_core.cli import main

    code = main([str(a) for a in args])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@pytest.fixture(scope="module")
def fork_run(tmp_path_factory):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    logs = tmp_path_factory.mktemp("forked-logs")
    counter = {"n": 0, "seconds": 0.0}

    def run(args, cwd, **env):
        counter["n"] += 1
        err = logs / f"{counter['n']}.log"
        t0 = time.perf_counter()
        p = ctx.Process(target=_forked_main, args=(list(args), str(cwd), _env(**env), str(err)))
        p.start()
        p.join(600)
        if p.exitcode is None:
            p.kill()
            p.join()
            raise AssertionError(f"deltamic {' '.join(map(str, args))} did not finish in 600 s")
        counter["seconds"] += time.perf_counter() - t0
        return _Forked(p.exitcode, err.read_text(errors="replace"))

    run.counter = counter
    return run


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


def test_sigkill_during_fit_write(inputs, tmp_path, fork_run):
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
        r = fork_run(cmd, work, DELTAMIC_TEST_KILL_AT=k, DELTAMIC_TEST_KILL_GROUP=1)
        assert r.returncode == -9, (k, r.returncode, r.stderr[-500:])
        ok = _complete(work / "out") and _hash_tree([work / "a.tif", work / "seeds.csv"]) == before
        ok = ok and "Traceback" not in r.stderr and old is not None
        r2 = None
        if i % 5 == 4 or i == len(points) - 1:
            # the next run succeeds, sweeping what the killed ones left (in between, the next
            # killed run starts from the state the previous kill left: also a "next run")
            r2 = fork_run(cmd, work)
            ok = ok and r2.returncode == 0 and _complete(work / "out")
            leftovers = [p.name for p in work.iterdir() if ".partial-" in p.name]
            ok = ok and not leftovers
        lose_nothing += ok
        assert ok, (k, r2 and r2.returncode, r2 and r2.stderr[-800:])
    TABLE["fit: SIGKILL during the write"] = (len(points), lose_nothing)
    print(f"fit: {len(points)} kills over {n_steps} write steps, {lose_nothing} lost nothing")


@pytest.mark.parametrize("workers", ["thread", "processes"])
def test_sigkill_during_batch_write(inputs, tmp_path, fork_run, workers):
    n_kills = N_BATCH if workers == "thread" else N_BATCH_PROCESSES
    if n_kills == 0:
        pytest.skip("no kills asked for")
    mode = {"DELTAMIC_TEST_BATCH_IN_PROCESS": 1 if workers == "thread" else 0}
    work = tmp_path
    for f in ("a.tif", "b.tif", "seeds.csv"):
        (work / f).write_bytes((inputs / f).read_bytes())
    names = [work / "a.tif", work / "b.tif", work / "seeds.csv"]
    before = _hash_tree(names)
    cmd = ["batch", "a.tif", "b.tif", *FIT_ARGS, "--out", "res", "--workers", "1"]
    log = work / "steps.log"
    r0 = _run(cmd, work, **mode)  # the console script, uninterrupted
    assert r0.returncode == 0, r0.stderr
    assert _complete(work / "res" / "a") and _complete(work / "res" / "b")
    # the write steps of a run that has one item to redo (what every killed run below has);
    # the hook counts per process (the CLI, and a worker process in "processes" mode)
    outdir.remove_owned(work / "res" / "b")
    assert fork_run(cmd, work, DELTAMIC_TEST_FAULT_LOG=log, **mode).returncode == 0
    per_pid: dict = {}
    for line in log.read_text().splitlines():
        per_pid[line.split()[0]] = per_pid.get(line.split()[0], 0) + 1
    log.unlink()
    n_steps = max(per_pid.values())
    assert n_steps >= 5, per_pid
    rng = random.Random(11 if workers == "thread" else 12)
    kills = lose_nothing = i = 0
    t0 = time.perf_counter()
    while kills < n_kills:
        assert i < 3 * n_kills, f"only {kills} of {i} runs were killed"
        # remove one finished item (through the tool's own rule) so the run has writing to do
        victim = work / "res" / ("a" if i % 2 else "b")
        other = work / "res" / ("b" if i % 2 else "a")
        if _complete(victim) and _complete(other):
            outdir.remove_owned(victim)
        done_before = [d for d in (victim, other) if _complete(d)]
        k = rng.randint(1, n_steps)
        r = fork_run(cmd, work, DELTAMIC_TEST_KILL_AT=k, DELTAMIC_TEST_KILL_GROUP=1, **mode)
        i += 1
        if r.returncode == 0:
            continue  # a step this run did not reach (a worker process's counter): not a kill
        kills += 1
        ok = r.returncode == -9 and "Traceback" not in r.stderr and _hash_tree(names) == before
        # a finished item stays complete; an unfinished one is complete, not there (never begun
        # or swept) or an error of ours, never a half-written directory
        ok = ok and all(_complete(d) for d in done_before)
        for d in (victim, other):
            ok = ok and (_complete(d) or not d.exists() or not any(d.iterdir()) or (d / "error.txt").is_file())
        r2 = None
        if kills % 5 == 0 or kills == n_kills:
            # the next run succeeds (in between, the next killed run resumes what this one left)
            r2 = fork_run(cmd, work, **mode)
            ok = ok and r2.returncode == 0 and _complete(victim) and _complete(other)
            ok = ok and outdir.Collection(work / "res").problem() is None
            ok = ok and not [p.name for p in (work / "res").iterdir() if ".partial-" in p.name]
        lose_nothing += ok
        assert ok, (k, r.returncode, r.stderr[-800:], r2 and r2.returncode, r2 and r2.stderr[-800:])
    wall = time.perf_counter() - t0
    TABLE[f"batch ({workers}): SIGKILL during the write"] = (kills, lose_nothing)
    print(
        f"batch, tasks on {'a worker thread' if workers == 'thread' else 'worker processes'}: {kills} kills "
        f"over {n_steps} write steps ({i} runs), {lose_nothing} lost nothing ({wall:.0f} s, "
        f"{fork_run.counter['n']} forked runs in this module so far)"
    )
