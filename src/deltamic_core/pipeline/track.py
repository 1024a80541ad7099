"""Time-lapse tracking: fit a TZYX stack frame by frame, each fit starting from the previous one.

Cells keep their labels from frame to frame (the mesh fitted at t, with its labels, is the
initial mesh at t + 1), so the label is the track identity. Outputs::

    OUT/t0000/ ... OUT/tNNNN/   one fit's outputs directory per frame (see deltamic_core.pipeline.outputs)
    OUT/tracks.csv              cell, t, volume_um3, area_um2, sphericity, centroid (z, y, x) um
    OUT/report.json             per-frame losses and timings, written last

Each frame directory is complete or absent (staged), and ``OUT/report.json`` only appears when
all frames are done. A rerun of an interrupted track resumes after the last finished frame,
starting from that frame's fitted mesh.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..mesh import Mesh
from .outputs import REPORT_NAME, csv_text, is_complete, json_text

TRACK_COLUMNS = ("cell", "t", "volume_um3", "area_um2", "sphericity", "centroid_z_um", "centroid_y_um", "centroid_x_um")


def frame_dir(out_dir: str | os.PathLike, t: int) -> Path:
    return Path(out_dir) / f"t{t:04d}"


def track_stack(
    stack: np.ndarray,
    spacing_um,
    init_mesh: Mesh,
    psf,
    config,
    out_dir: str | os.PathLike,
    *,
    command=None,
    progress: bool = True,
    input_path: str | None = None,
    overwrite: bool = False,
) -> list[dict]:
    """Fit every frame of ``stack`` and write the per-frame outputs and the tracks table.

    Parameters
    ----------
    stack : (T, Z, Y, X) float array
    spacing_um : (3,) float
        Voxel size (z, y, x) in um.
    init_mesh : Mesh
        Initial mesh for frame 0, um in the image frame, cells labelled 1..n.
    psf : PSFModel
        Shared by all frames (with ``config.learn_psf`` its learnt parameters carry over).
    config : FitConfig
    out_dir : path
        Output directory (created; frames already finished there are reused unless
        ``overwrite``). It is a collection (:class:`deltamic_core.io.outdir.Collection`): each
        frame directory is published with its manifest, the tables are replaced atomically.

    Returns
    -------
    list of dict: the rows of ``tracks.csv``.
    """
    from .run import fit_and_write

    stack = np.asarray(stack)
    if stack.ndim != 4:
        raise ValueError(f"stack must have shape (T, Z, Y, X), got {stack.shape}")
    from ..io.outdir import Collection, OutputError

    out = Path(out_dir)
    try:
        col = Collection(out).open()
    except OutputError as exc:
        from .errors import InputError

        raise InputError(str(exc)) from None
    mesh = init_mesh
    rows: list[dict] = []
    frames: list[dict] = []
    t_start = time.perf_counter()
    for t in range(stack.shape[0]):
        fdir = frame_dir(out, t)
        if is_complete(fdir) and not overwrite:
            # resume: reuse the finished frame and continue from its mesh
            import json

            rep = json.loads((fdir / REPORT_NAME).read_text())
            mesh = _fitted_mesh(fdir, spacing_um)
            cells = rep.get("cells", [])
            frames.append({"t": t, "resumed": True, "final_loss": rep.get("final_loss")})
        else:
            _, rep, psf = fit_and_write(
                stack[t],
                spacing_um,
                mesh,
                psf,
                config,
                fdir,
                command=command,
                extra={"input": input_path, "frame": t},
                progress=progress,
                desc=f"t={t}/{stack.shape[0] - 1}",
                overwrite=True,  # a frame of ours that did not finish, or --overwrite
            )
            mesh = _fitted_mesh(fdir, spacing_um)
            cells = rep["cells"]
            frames.append(
                {
                    "t": t,
                    "final_loss": rep.get("final_loss"),
                    "timings": rep.get("timings"),
                    "iterations": rep.get("iterations"),
                }
            )
        for c in cells:
            rows.append({"cell": c["cell"], "t": t, **{k: c[k] for k in TRACK_COLUMNS[2:] if k in c}})
    col.write_text("tracks.csv", csv_text(rows, TRACK_COLUMNS))
    from .outputs import versions

    col.write_text(
        REPORT_NAME,
        json_text(
            {
                "command": list(command) if command else None,
                "input": input_path,
                "n_frames": int(stack.shape[0]),
                "frames": frames,
                "total_s": time.perf_counter() - t_start,
                "versions": versions(),
            }
        ),
    )
    return rows


def propagation_order(n_frames: int, t0: int) -> list[tuple[int, int]]:
    """The frames a propagation from frame ``t0`` fits, in order, as (t, the frame it starts from):
    forwards t0+1, ..., T-1, then backwards t0-1, ..., 0 (each from its neighbour towards t0)."""
    if not 0 <= int(t0) < int(n_frames):
        raise ValueError(f"frame {t0} is not in the time series (frames 0..{int(n_frames) - 1})")
    t0 = int(t0)
    forward = [(t, t - 1) for t in range(t0 + 1, int(n_frames))]
    backward = [(t, t + 1) for t in range(t0 - 1, -1, -1)]
    return forward + backward


def propagate_steps(
    stack,
    spacing_um,
    mesh: Mesh,
    psf,
    config,
    *,
    t0: int = 0,
    origin_um=(0.0, 0.0, 0.0),
    holder: dict | None = None,
):
    """Fit the other frames of a time series from frame ``t0``'s fitted ``mesh``, step by step.

    The frames come in :func:`propagation_order`; each starts from the fitted mesh of the frame
    it follows (as :func:`track_stack` does), with the PSF that frame ended with (learnt
    parameters carry over with ``config.learn_psf``). Yields ``(t, step, None)`` after every
    iteration (a :class:`~deltamic_core.fit.StepResult`) and ``(t, None, result)`` when frame
    ``t`` is done (its :class:`~deltamic_core.fit.FitResult`). ``stack`` is indexed one frame
    at a time (a lazy array is read frame by frame). The Fitter lives only in
    ``holder["fitter"]`` (as in :func:`~deltamic_core.pipeline.fit_steps`): clearing ``holder``
    releases it and ends the generator.
    """
    from ..fit import Fitter

    holder = {} if holder is None else holder
    results = {int(t0): (mesh, psf)}
    for t, previous in propagation_order(len(stack), t0):
        start_mesh, start_psf = results[previous]
        image = np.asarray(stack[t], dtype=np.float32)
        holder["fitter"] = Fitter(image, tuple(spacing_um), start_mesh, start_psf, config, origin_um=tuple(origin_um))
        while "fitter" in holder and not holder["fitter"].done:
            yield t, holder["fitter"].step(), None
        if "fitter" not in holder:
            return
        result = holder["fitter"].result()
        if not np.all(np.isfinite(result.mesh.verts)):
            from .errors import FitFailedError

            raise FitFailedError(f"frame {t}: the fit produced a non-finite mesh")
        results[t] = (result.mesh, holder["fitter"].psf)
        yield t, None, result
    holder.pop("fitter", None)


def _fitted_mesh(fdir: Path, spacing_um) -> Mesh:
    # the next frame starts from what was written, so a resumed run and an uninterrupted one
    # start every frame from identical meshes
    from ..io import read_mesh

    return read_mesh(fdir / "mesh.rec")  # written in um ('# units = um')


def track_job(job) -> list[dict]:
    """Fit every frame of the TZYX image of ``job`` (a FitJob without ``frame``) into ``job.out``."""
    from .inputs import initial_mesh, load_image
    from .outputs import check_replaceable
    from .psfspec import make_psf
    from .run import check_device, job_inputs

    # a rerun resumes (finished frames are reused, like a batch); --overwrite fits every frame again
    check_replaceable(job.out, overwrite=job.overwrite, inputs=job_inputs(job), resume=True)
    check_device(job.device, job.backend)
    stack, spacing = load_image(job.image, channel=job.channel, spacing=job.spacing_um, allow_time=True, what="STACK")
    psf = make_psf(job.psf, spacing)
    config = job.fit_config()
    init = initial_mesh(job.init, stack[0], spacing, psf=psf, edge_um=job.edge_um, stain=job.stain)
    return track_stack(
        stack,
        spacing,
        init,
        psf,
        config,
        job.out,
        command=job.command,
        progress=job.progress,
        input_path=str(job.image),
        overwrite=job.overwrite,
    )
