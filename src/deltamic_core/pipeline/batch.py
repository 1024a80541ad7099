"""Many fits as tasks on dask.distributed: resumable, one failure never stops the batch.

Every input file is an item (every time point of a TZYX stack is an item of its own, named
``<stem>_t0000``...). Each item writes ``OUT/<item>/`` through a staged directory whose
``report.json`` is written last, so:

- **resumable**: an item whose ``OUT/<item>/report.json`` exists is skipped (a rerun of the same
  command only does what is missing or failed);
- **failure isolation**: an exception (or a crashed worker) is caught per item, written to
  ``OUT/<item>/error.txt`` (message on the first line, then the traceback) and listed in the
  summary; the other items run on;
- ``OUT/summary.csv`` (item, status, seconds, error) and a table on stdout at the end; the
  command exits non-zero when any item failed.

Threads: dask starts worker processes with ``OMP_NUM_THREADS=1`` (and MKL/OpenBLAS likewise), so
libraries do not oversubscribe the cores; each task then calls
``torch.set_num_threads(threads_per_worker)``. A local cluster gets one task slot per worker
(``threads_per_worker=1`` in dask terms) and ``n_workers = cores // threads_per_worker`` by
default.

Running on a SLURM cluster (``pip install napari-deltamic[cluster]`` for dask-jobqueue): start
a scheduler with workers from a login node and point ``deltamic batch`` at it::

    # cluster.py -- keep it running (e.g. in tmux) while the batch runs
    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(
        queue="cpu", account="myproject",
        cores=2, processes=2,    # 2 dask workers per job, one task slot each (dask threads = cores / processes)
        job_cpu=16,              # but book 16 CPUs: 8 torch threads for each of the two fits
        memory="32GB", walltime="04:00:00",
        job_script_prologue=["export OMP_NUM_THREADS=1"],
    )
    cluster.scale(jobs=10)
    print(cluster.scheduler_address)     # e.g. tcp://10.0.0.5:8786
    input("running; press Enter to stop")

    # then, from any machine that can reach the scheduler:
    deltamic batch data/*.tif --seeds "seeds/{stem}.csv" --out results \\
        --scheduler tcp://10.0.0.5:8786 --threads-per-worker 8

The Python API is :func:`run_batch` (with :func:`fit_item` as the task) or, for another
per-item function, :func:`run_tasks`.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import one_line
from .outputs import ERROR_NAME, atomic_write_text, csv_text, is_complete, staged_directory


@dataclass(frozen=True)
class BatchItem:
    """One unit of work: a file, or one time point of a TZYX file."""

    name: str  # the item's sub-directory under OUT
    path: str
    frame: int | None = None

    @property
    def stem(self) -> str:
        """The input's file name without its extension (``{stem}`` in the init paths)."""
        return input_stem(self.path)


def input_stem(path) -> str:
    """``Path.stem`` of an input, also without the ``.ome`` of ``name.ome.tif``."""
    stem = Path(path).stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def expand_items(inputs: Sequence[str | os.PathLike]) -> list[BatchItem]:
    """Items for the given input files; TZYX TIFF stacks become one item per time point.

    Item names are the inputs' stems (``Path.stem``), made safe and non-empty (a hidden
    ``.name.tif`` becomes ``name``, an empty or odd one ``item``/underscores) and unique (two
    inputs with one stem get ``-2``, ``-3``... in input order); the same file listed twice is
    one item. A file whose header cannot be read stays a single item (it fails, and is
    reported, when its task runs).
    """
    from ..io.outdir import unique_item_names

    files: list[Path] = []
    seen_files: set = set()
    for inp in inputs:
        p = Path(inp)
        key = os.path.realpath(p)
        if key in seen_files:
            continue
        seen_files.add(key)
        files.append(p)
    names = unique_item_names(input_stem(p) for p in files)
    items: list[BatchItem] = []
    for p, name in zip(files, names):
        n_t = _time_points(p)
        if n_t is None:
            items.append(BatchItem(name, str(p)))
        else:
            items.extend(BatchItem(f"{name}_t{t:04d}", str(p), t) for t in range(n_t))
    # a frame item may still meet another input's name ("a" TZYX and "a_t0000.tif")
    final = unique_item_names(it.name for it in items)
    return [BatchItem(n, it.path, it.frame) for n, it in zip(final, items)]


def _time_points(path: Path) -> int | None:
    """Number of time points of a TIFF whose series has a T axis (> 1), else None."""
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axes, shape = series.axes.upper(), series.shape
    except Exception:  # noqa: BLE001 - the task will report the unreadable file
        return None
    if "T" in axes and shape[axes.index("T")] > 1:
        return int(shape[axes.index("T")])
    return None


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------
def fit_item(item: BatchItem, item_dir: str, job) -> dict:
    """Fit one item with the options of ``job`` (a :class:`~deltamic_core.pipeline.FitJob`;
    ``{stem}`` in its init path becomes the item's stem) into ``item_dir``."""
    from .run import fit_and_write, prepare

    p = prepare(job.for_item(item.path, item.frame, item.stem))
    _, report, _ = fit_and_write(
        p.image,
        p.spacing_um,
        p.init_mesh,
        p.psf,
        p.config,
        item_dir,
        origin_um=p.origin_um,
        command=job.command,
        extra={"input": item.path, "frame": item.frame, "item": item.name},
        progress=False,
        mechanics=job.mechanics,
        overwrite=True,  # an unfinished or failed item of ours (anything else is refused)
    )
    return {"n_cells": report["n_cells"], "final_loss": report.get("final_loss")}


def _run_item(func: Callable, item: BatchItem, item_dir: str, threads: int, kwargs: dict) -> dict:
    """Worker-side wrapper: set torch threads, skip finished items, turn exceptions into a status."""
    import torch

    torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    status = {
        "item": item.name,
        "status": "ok",
        "seconds": 0.0,
        "error": "",
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "pid": os.getpid(),
    }
    if is_complete(item_dir):
        status["status"] = "skipped"
        return status
    try:
        status.update(func(item, item_dir, **kwargs) or {})
    except Exception as exc:  # noqa: BLE001 - failure isolation: every error becomes a status
        status["status"] = "failed"
        status["error"] = one_line(exc)
        write_error(item_dir, status["error"], traceback.format_exc())
    status["seconds"] = time.perf_counter() - t0
    return status


def write_error(item_dir: str | os.PathLike, message: str, details: str = "") -> None:
    """Make ``item_dir`` hold only ``error.txt`` (message first line, then details).

    Best effort: an item directory that is not provably ours is left alone (the failure is
    still in the summary)."""
    from .errors import PipelineError

    try:
        with staged_directory(item_dir, overwrite=True) as tmp:
            atomic_write_text(Path(tmp) / ERROR_NAME, message.rstrip("\n") + "\n" + (details or ""))
    except (PipelineError, OSError):
        pass


# ---------------------------------------------------------------------------------------------
# the client side
# ---------------------------------------------------------------------------------------------
def run_tasks(
    func: Callable,
    items: Sequence[BatchItem],
    out_dir: str | os.PathLike,
    *,
    kwargs: dict | None = None,
    scheduler: str | None = None,
    client=None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """Run ``func(item, item_dir, **kwargs)`` for every item on a dask cluster.

    Parameters
    ----------
    func : callable
        Importable (picklable) function writing ``item_dir`` (with ``report.json`` last, e.g.
        through :func:`deltamic_core.pipeline.outputs.staged_directory`); returns a dict merged into the
        item's status, or raises.
    items : sequence of BatchItem
    out_dir : path
        Batch directory; item ``i`` writes ``out_dir / i.name``.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``); default a LocalCluster.
    client : distributed.Client, optional
        Use this client instead (neither started nor closed here).
    n_workers : int, optional
        Local worker processes (default: cores // threads_per_worker).
    threads_per_worker : int
        ``torch.set_num_threads`` inside each task.
    log : callable or None
        Receives one line per finished item.

    Returns
    -------
    list of dict, one per item in input order: item, status ('ok', 'skipped', 'failed'),
    seconds, error, torch_threads, ...
    """
    from ..io.outdir import Collection, OutputError

    out = Path(out_dir)
    try:
        col = Collection(out).open()  # new, or a batch directory of ours (resumed)
    except OutputError as exc:
        from .errors import InputError

        raise InputError(str(exc)) from None
    kwargs = dict(kwargs or {})
    threads = int(threads_per_worker)
    if threads < 1:
        raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    statuses: dict[str, dict] = {}
    todo = []
    for it in items:
        if is_complete(out / it.name):
            statuses[it.name] = {"item": it.name, "status": "skipped", "seconds": 0.0, "error": ""}
        else:
            todo.append(it)
    if log and len(todo) < len(items):
        log(f"{len(items) - len(todo)} of {len(items)} item(s) already done: skipped")
    if todo:
        with _connect(client, scheduler, n_workers, threads) as cl:
            statuses.update(_submit_all(cl, func, todo, out, threads, kwargs, log))
    results = [statuses[it.name] for it in items]
    col.write_text("summary.csv", csv_text(results, ("item", "status", "seconds", "error")))
    return results


class _connect:
    """Context manager yielding a dask Client (own LocalCluster, a scheduler address, or given)."""

    def __init__(self, client, scheduler, n_workers, threads):
        self.client, self.scheduler, self.n_workers, self.threads = client, scheduler, n_workers, threads
        self._own = []

    def __enter__(self):
        import dask
        from distributed import Client, LocalCluster

        if self.client is not None:
            return self.client
        if self.scheduler:
            try:
                cl = Client(self.scheduler, timeout="20s")
            except OSError as exc:
                raise OSError(f"cannot reach the dask scheduler at {self.scheduler} ({exc})") from None
            self._own.append(cl)
            return cl
        n = self.n_workers or max(1, (os.cpu_count() or 1) // self.threads)
        if os.environ.get("DELTAMIC_TEST_BATCH_IN_PROCESS") == "1":
            # test hook (the SIGKILL fault test): the same tasks and writes, run by a worker
            # thread of this process instead of worker processes (no interpreter to start)
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
            cl = Client(cluster)
            self._own += [cl, cluster]
            return cl
        env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
        # set explicitly: a worker must not start one OpenMP thread per core under each task
        env.update({"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1})
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            # host: the scheduler and the workers listen on the loopback interface only (nobody
            # else on the network can submit pickled tasks to them)
            cluster = LocalCluster(
                host="127.0.0.1", n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            )
        cl = Client(cluster)
        self._own += [cl, cluster]
        return cl

    def __exit__(self, *exc):
        for obj in self._own:
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        return False


def _submit_all(client, func, items, out: Path, threads: int, kwargs: dict, log) -> dict:
    import uuid

    from distributed import as_completed

    futures = {}
    for it in items:
        fut = client.submit(
            _run_item,
            func,
            it,
            str(out / it.name),
            threads,
            kwargs,
            key=f"deltamic-{it.name}-{uuid.uuid4().hex[:8]}",
            pure=False,
        )
        futures[fut] = it
    done: dict[str, dict] = {}
    for i, fut in enumerate(as_completed(futures), start=1):
        it = futures[fut]
        try:
            st = fut.result()
        except Exception as exc:  # noqa: BLE001 - a worker died or the task could not run
            msg = one_line(exc)
            st = {"item": it.name, "status": "failed", "seconds": 0.0, "error": msg}
            try:
                write_error(out / it.name, msg, "".join(traceback.format_exception(exc)))
            except OSError:
                pass
        done[it.name] = st
        if log:
            extra = f": {st['error']}" if st["status"] == "failed" else ""
            log(f"[{i}/{len(items)}] {it.name} {st['status']} ({st.get('seconds', 0.0):.1f} s){extra}")
    return done


def run_batch(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, job, **kwargs) -> list[dict]:
    """Fit every input (and every time point of TZYX inputs) with the options of ``job``
    (a :class:`~deltamic_core.pipeline.FitJob`; its image and out are ignored); other keyword
    arguments go to :func:`run_tasks`.

    What every item would reject is refused before any cluster starts: an output folder that is
    neither new nor a batch folder of these inputs, an unavailable device, bad fit options, a PSF
    that cannot be built, an input that cannot be listed.
    """
    from .errors import InputError
    from .outputs import check_replaceable
    from .psfspec import make_psf
    from .run import check_device

    out = Path(out_dir)
    check_replaceable(out, resume=True, inputs=list(inputs))
    check_device(job.device, job.backend)
    job = job.replace(image=None, out=None, progress=False)
    make_psf(job.psf, (1.0, 1.0, 1.0))  # the spacing does not matter for what is checked
    job.fit_config()
    try:
        items = expand_items(inputs)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    log = kwargs.get("log", print)
    if log:
        log(f"batch: {len(items)} item(s) from {len(inputs)} input(s) -> {out}")
    return run_tasks(fit_item, items, out, kwargs={"job": job}, **kwargs)


def format_summary(results: Sequence[dict]) -> str:
    """A plain-text table of the item statuses."""
    rows = [("item", "status", "seconds", "error")] + [
        (r["item"], r["status"], f"{r.get('seconds', 0.0):.1f}", r.get("error", "")) for r in results
    ]
    w = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}".rstrip() for a, b, c, d in rows]
    n_ok = sum(r["status"] == "ok" for r in results)
    n_skip = sum(r["status"] == "skipped" for r in results)
    n_fail = sum(r["status"] == "failed" for r in results)
    lines.append(f"{n_ok} done, {n_skip} skipped, {n_fail} failed")
    return "\n".join(lines)


__all__ = ["BatchItem", "expand_items", "fit_item", "run_tasks", "run_batch", "format_summary", "write_error"]
