"""Running a :class:`~deltamic_core.pipeline.job.FitJob`: check everything, fit, write.

:func:`prepare` reads and checks every input (before any work), :func:`fit_steps` drives the
:class:`~deltamic_core.fit.Fitter` one step at a time (the napari widget's worker),
:func:`run` fits to completion, :func:`fit_to_directory` also writes the outputs directory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FitFailedError, InputError
from .inputs import initial_mesh, load_image
from .job import FitJob
from .psfspec import make_psf


def check_device(device: str, backend: str) -> None:
    """Refuse a device torch cannot use or a mesh-transform backend that is not installed."""
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but torch sees no CUDA device (use --device cpu)")
    if backend != "auto":
        from ..meshft import available_backends

        have = available_backends()
        if backend not in have:
            raise InputError(f"--backend {backend!r} is not available here; available: {', '.join(have)} or auto")


def check_psf_resolved(psf, spacing_um, option: str = "--sigma") -> None:
    """Refuse a Gaussian PSF far narrower than the voxels (unresolvable, and a very slow render)."""
    sig = getattr(psf, "sigma_um", None)
    if sig is None:
        return
    from ..geometry.validate import check_psf_width

    sig = np.asarray(sig.detach().cpu() if hasattr(sig, "detach") else sig, dtype=float).reshape(-1)[:3]
    try:
        check_psf_width(sig, spacing_um, what=f"{option} (the PSF standard deviation)")
    except ValueError as exc:
        raise InputError(str(exc)) from None


def check_edge(edge_um, spacing_um, option: str = "--edge") -> None:
    """Refuse a target triangle edge far below the voxel size (a mesh finer than the image can
    show only costs time: millions of triangles before any cost check could stop it)."""
    if edge_um is None:
        return
    vox = float(np.min(spacing_um))
    if not float(edge_um) >= 0.25 * vox:
        raise InputError(
            f"{option} {float(edge_um):.3g} um is below a quarter of the smallest voxel ({vox:.3g} um): "
            f"the image cannot resolve such triangles (use {option} >= {0.25 * vox:.3g})"
        )


@dataclass
class Prepared:
    """The checked inputs of a fit, ready for the Fitter."""

    image: np.ndarray  # (Z, Y, X) float32
    spacing_um: tuple
    origin_um: tuple
    psf: object
    config: object
    init_mesh: object
    job: FitJob


def prepare(job: FitJob, psf=None) -> Prepared:
    """Read and check every input of ``job`` (raises :class:`InputError` before any work).

    ``psf``: a ready PSF model to use instead of ``job.psf`` (e.g. one measured from a bead
    image the napari user has open).
    """
    from .._checks import check_spacing, check_vector3

    if job.init is None:
        raise InputError("give exactly one of --init MESH, --seeds CSV or --labels TIF")
    check_device(job.device, job.backend)
    if job.per_object and job.stain == "membrane":
        raise InputError("--per-object fits separate filled objects: use it with --stain interior or --stain both")
    if job.image_data is not None:
        if job.spacing_um is None:
            raise InputError("an in-memory image needs its voxel size (spacing_um)")
        image = _check_array(job.image_data)
        spacing = check_spacing(job.spacing_um, "--spacing")
    else:
        image, spacing = load_image(job.image, channel=job.channel, frame=job.frame, spacing=job.spacing_um)
    origin = check_vector3(job.origin_um, "origin_um")
    psf = make_psf(job.psf, spacing) if psf is None else psf
    check_psf_resolved(psf, spacing)
    check_edge(job.edge_um, spacing)
    config = job.fit_config()
    init = initial_mesh(job.init, image, spacing, psf=psf, edge_um=job.edge_um, origin_um=origin, stain=job.stain)
    return Prepared(image, spacing, origin, psf, config, init, job)


def _check_array(data) -> np.ndarray:
    from .._checks import check_image

    try:
        return check_image(np.asarray(data, dtype=np.float32), "the image", min_side=4)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def make_fitter(p: Prepared):
    from ..fit import Fitter

    return Fitter(p.image, p.spacing_um, p.init_mesh, p.psf, p.config, origin_um=p.origin_um)


def fit_steps(p: Prepared, holder: dict | None = None, state: dict | None = None):
    """Build the Fitter and yield its :class:`~deltamic_core.fit.StepResult` after each step.

    The Fitter lives only in ``holder["fitter"]`` (no local reference survives a ``yield``):
    a caller may release it, with its solver and render plan, by clearing ``holder`` while
    the generator stays suspended; the generator then ends. Cells are added or removed while it
    runs by putting a :class:`~deltamic_core.pipeline.cells.CellChange` into
    ``holder["changes"]`` (:func:`~deltamic_core.pipeline.cells.changes_queue`, made here if
    absent): it is applied before the next step, the other cells go on where they are. A
    ``threading.Event`` in ``holder["stop"]``, once set, ends the generator before the next
    step (a caller that also calls ``holder["fitter"].cancel()`` abandons the step in
    progress: it raises :class:`~deltamic_core.fit.FitCancelled`, the state stays the last
    completed step's). ``state`` (:meth:`~deltamic_core.fit.Fitter.export_state` of a fit of
    the same job, e.g. in another process) continues that fit instead of starting one.
    """
    from .cells import apply_changes, changes_queue

    holder = {} if holder is None else holder
    changes = changes_queue(holder)
    fitter = make_fitter(p)
    if state is not None:
        fitter.load_state(state)
    holder["fitter"] = fitter
    del fitter
    stop = holder.get("stop")
    while "fitter" in holder and not holder["fitter"].done and not (stop is not None and stop.is_set()):
        apply_changes(holder["fitter"], changes)
        yield holder["fitter"].step()


def warm_up() -> None:
    """Pay ahead of a first fit what a process pays once: the lazily imported modules (scipy's,
    the renderer's, finufft) and loading an already-built native kernel (never
    compiles: a kernel still to be built is built by the first real fit, as before). A tiny
    job (one seed in a 12^3 noise box) is prepared, and stepped twice when the kernel is
    loaded (the real-space route would build it otherwise). For front ends that can run it
    while the user is busy elsewhere (a thread)."""
    from ..meshft import _native
    from ..meshft._build import KernelUnavailable
    from ..meshft._registry import available_backends
    from .inputs import InitSpec
    from .psfspec import PSFSpec

    try:
        kernel = _native.extension(build=False)
    except KernelUnavailable:
        kernel = None
    rng = np.random.default_rng(0)
    job = FitJob(
        image_data=rng.random((12, 12, 12), dtype=np.float32),
        spacing_um=(1.0, 1.0, 1.0),
        init=InitSpec("seeds", data=(np.array([[5.5, 5.5, 5.5]]), None)),
        psf=PSFSpec(),
        iterations=2,
        levels=(1,),
        backend="nufft" if "nufft" in available_backends() else "torch",
        progress=False,
    )
    prepared = prepare(job)
    if kernel is None:
        from ..meshft import nufft_backend  # noqa: F401
        from ..render import Renderer  # noqa: F401 - the imports only

        return
    for _ in fit_steps(prepared):
        pass


def run_fit(
    image,
    spacing_um,
    init_mesh,
    psf,
    config,
    *,
    origin_um=(0.0, 0.0, 0.0),
    progress: bool = True,
    desc: str = "fit",
    per_object: bool = False,
):
    """Run a :class:`~deltamic_core.fit.Fitter` to completion with a progress bar.

    Returns ``(result, timings, fitted_psf)``: the FitResult, seconds (setup, fit,
    per_iteration, and the fitter's own), the fitted PSF model (a copy). With ``per_object``
    every cell is fitted in its own crop (:func:`~deltamic_core.pipeline.objects.fit_objects`).
    """
    from tqdm.auto import tqdm

    from ..fit import Fitter

    if per_object:
        return _run_fit_per_object(image, spacing_um, init_mesh, psf, config, origin_um, progress, desc)
    t0 = time.perf_counter()
    fitter = Fitter(image, tuple(spacing_um), init_mesh, psf, config, origin_um=tuple(origin_um))
    t1 = time.perf_counter()
    bar = tqdm(
        total=int(config.total_iterations),
        desc=desc,
        unit="it",
        disable=not progress,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )

    def callback(step):
        bar.update(1)
        bar.set_postfix_str(f"loss={float(step.loss):.4g}", refresh=False)

    try:
        fitter.run(None, callback=callback)
    finally:
        bar.close()
    t2 = time.perf_counter()
    res = fitter.result()
    timings = {"setup_s": t1 - t0, "fit_s": t2 - t1, "per_iteration_s": (t2 - t1) / max(len(res.loss_history), 1)}
    timings.update({f"fitter_{k}_s": float(v) for k, v in res.timings.items()})
    return res, timings, fitter.psf


def _run_fit_per_object(image, spacing_um, init_mesh, psf, config, origin_um, progress, desc):
    import copy

    from tqdm.auto import tqdm

    from .objects import fit_objects

    n = int(init_mesh.n_cells)
    bar = tqdm(total=n, desc=desc, unit="object", disable=not progress, file=sys.stderr, leave=False)
    t0 = time.perf_counter()
    try:
        res, info = fit_objects(
            image, spacing_um, init_mesh, psf, config, origin_um=origin_um, callback=lambda k, n: bar.update(1)
        )
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    timings = {"setup_s": 0.0, "fit_s": dt, "per_object_s": dt / max(n, 1), "crops": info["crops"]}
    timings.update({f"fitter_{k}_s": float(v) for k, v in res.timings.items()})
    return res, timings, copy.deepcopy(psf)


def fit_report(res, psf, config, timings: dict, command=None, extra: dict | None = None) -> dict:
    """The content of report.json (measurements are added by the outputs writer)."""
    from .outputs import versions

    hist = [float(x) for x in res.loss_history]
    report = {
        "command": list(command) if command else None,
        "loss_history": hist,
        "final_loss": hist[-1] if hist else None,
        "iterations": len(hist),
        "timings": dict(timings),
        "psf": res.psf_params,  # the fitted PSF (learnt with --learn-psf)
        "photometric": {
            "gain": float(res.gain),
            "background": float(res.background),
            **({"cytoplasm_level_per_um": float(res.volume_level)} if getattr(res, "volume_level", None) else {}),
        },
        "backend": _resolved_backend(res.backend, config),
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "level_history": res.level_history,
        "n_rollbacks": res.n_rollbacks,
        "converged": res.converged,
        "psf_initial": psf.as_dict(),
    }
    if extra:
        report.update(extra)
    return report


def _resolved_backend(name: str, config) -> str:
    """The mesh transform backend that actually ran ("auto" resolved, as the renderer does)."""
    if name != "auto":
        return name
    import torch

    from ..meshft._registry import resolve

    return resolve("auto", torch.device(config.device), announce=False)[0]


def fit_and_write(
    image,
    spacing_um,
    init_mesh,
    psf,
    config,
    out_dir,
    *,
    origin_um=(0.0, 0.0, 0.0),
    command=None,
    extra=None,
    progress: bool = True,
    stage: bool = True,
    desc: str = "fit",
    before_write=None,
    mechanics: bool = False,
    overwrite: bool = False,
    per_object: bool = False,
):
    """Fit and write the outputs directory (``report.json`` last; staged when ``stage``).

    ``out_dir`` must have been checked (:func:`~deltamic_core.pipeline.outputs.check_replaceable`);
    an existing result there is replaced only with ``overwrite``.

    ``before_write(tmp_dir, result)`` may add files (e.g. the synthetic image) and return a dict
    merged into the report. Returns ``(result, report, fitted_psf)``.
    """
    from .outputs import staged_directory, write_fit_outputs

    t_start = time.perf_counter()
    res, timings, fitted_psf = run_fit(
        image,
        spacing_um,
        init_mesh,
        psf,
        config,
        origin_um=origin_um,
        progress=progress,
        desc=desc,
        per_object=per_object,
    )
    mesh = res.mesh
    if not np.all(np.isfinite(mesh.verts)):
        raise FitFailedError("the fit produced a non-finite mesh")
    report = fit_report(res, psf, config, timings, command=command, extra=extra)
    report["image"] = {"shape": list(image.shape), "spacing_um": list(spacing_um)}
    report["n_cells"] = int(mesh.n_cells)

    def write(d):
        t_w = time.perf_counter()
        if before_write is not None:
            more = before_write(Path(d), res)
            if more:
                report.update(more)
        report["timings"]["extra_outputs_s"] = time.perf_counter() - t_w
        report["timings"]["fit_total_s"] = time.perf_counter() - t_start  # before the outputs writer
        return write_fit_outputs(
            d, mesh, shape=image.shape, spacing_um=spacing_um, origin_um=origin_um, report=report, mechanics=mechanics
        )

    if stage:
        with staged_directory(out_dir, overwrite=overwrite) as tmp:
            report = write(tmp)
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        report = write(out_dir)
    return res, report, fitted_psf


@dataclass
class FitOutcome:
    result: object  # FitResult
    timings: dict
    psf: object  # the fitted PSF model
    prepared: Prepared


def _set_threads(job: FitJob) -> None:
    if job.threads is not None:
        import torch

        torch.set_num_threads(int(job.threads))


def run(job: FitJob) -> FitOutcome:
    """Fit ``job`` to completion in memory (no files written)."""
    p = prepare(job)
    _set_threads(job)
    res, timings, psf = run_fit(
        p.image,
        p.spacing_um,
        p.init_mesh,
        p.psf,
        p.config,
        origin_um=p.origin_um,
        progress=job.progress,
        per_object=job.per_object,
    )
    return FitOutcome(res, timings, psf, p)


def fit_to_directory(job: FitJob, out=None, *, extra: dict | None = None):
    """Fit ``job`` and write its outputs directory (``out``, default ``job.out``).

    Returns ``(result, report, fitted_psf)``.
    """
    from .outputs import check_replaceable

    out = job.out if out is None else out
    if out is None:
        raise InputError("no output directory given (--out DIR)")
    check_replaceable(out, overwrite=job.overwrite, inputs=job_inputs(job))
    p = prepare(job)
    _set_threads(job)
    info = {"input": job.image, **({"frame": job.frame} if job.frame is not None else {}), **(extra or {})}
    return fit_and_write(
        p.image,
        p.spacing_um,
        p.init_mesh,
        p.psf,
        p.config,
        out,
        origin_um=p.origin_um,
        command=job.command,
        extra=info,
        progress=job.progress,
        mechanics=job.mechanics,
        overwrite=job.overwrite,
        per_object=job.per_object,
    )


def job_inputs(job: FitJob) -> list:
    """The files a job reads (never inside what it may replace)."""
    paths = [job.image]
    init = job.init
    if init is not None:
        for name in ("mesh", "seeds", "labels", "path"):
            v = getattr(init, name, None)
            if isinstance(v, (str, os.PathLike)):
                paths.append(v)
    return [p for p in paths if isinstance(p, (str, os.PathLike))]
