"""A :class:`~deltamic_core.pipeline.job.FitJob` back as its ``deltamic fit`` command line.

The inverse of the command line's ``job_from_args``: parsing the words returned by
:func:`fit_command` with ``deltamic``'s parser gives back an equal FitJob (the napari widget's
"Copy as command", and the ``command`` of the report it writes). Options at their default are
left out, so the line is the shortest equivalent one. What has no command-line form (an
in-memory image or initial mesh without a file, an origin other than 0, extra FitConfig knobs)
either takes a placeholder file name the caller gives or is refused in one line.
"""

from __future__ import annotations

import math

from .errors import InputError
from .psfspec import OPTION

#: PSFSpec parameter -> command-line option: psfspec.OPTION, without the bead (it is the file
#: after ``--psf measured``, handled on its own below)
PSF_OPTIONS = {k: v for k, v in OPTION.items() if k != "bead"}
_INIT_OPTIONS = {"seeds": "--seeds", "labels": "--labels", "mesh": "--init"}


def _num(v) -> str:
    """A number as the shortest text that parses back to the same float (repr of a float)."""
    if isinstance(v, bool):
        raise InputError(f"expected a number, got {v!r}")
    if isinstance(v, int):
        return str(v)
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def fit_command(job, *, image: str | None = None, init: str | None = None, prog: str = "deltamic") -> list[str]:
    """The words of the ``deltamic fit`` command equivalent to ``job``.

    ``image`` / ``init``: the file names to put for an in-memory image / initial mesh (seeds,
    labels or mesh); without them such a job is refused. Raises :class:`InputError` naming
    what has no command-line form.
    """
    from .psfspec import parse_zernike

    words = [prog, "fit"]
    img = job.image if job.image is not None else image
    if img is None:
        raise InputError("the image is not a file: give a file name for it")
    words.append(str(img))
    if job.init is None:
        raise InputError("no initial mesh: give exactly one of --init, --seeds, --labels or --auto-seeds")
    if job.init.kind == "auto":
        words.append("--auto-seeds")
    else:
        path = job.init.path if job.init.path is not None else init
        if path is None:
            raise InputError(f"the initial {job.init.kind} is not a file: give a file name for it")
        words += [_INIT_OPTIONS[job.init.kind], str(path)]
        if job.init.kind == "mesh" and job.init.mesh_units is not None:
            words += ["--mesh-units", job.init.mesh_units]

    psf = job.psf
    params = psf.set_params()
    bead = params.pop("bead", None)
    if psf.model == "measured":
        if bead is None:
            raise InputError(
                "a measured PSF from an image layer has no file: save the bead image and use --psf measured"
            )
        words += ["--psf", "measured", str(bead)]
    elif psf.model != "gaussian" or params:
        words += ["--psf", psf.model]
    for name, value in params.items():
        option = PSF_OPTIONS.get(name)
        if option is None:
            raise InputError(f"the PSF parameter {name!r} has no command-line option")
        if name == "sigma_um":
            values = [value] if isinstance(value, (int, float)) else list(value)
            words += [option, *(_num(v) for v in values)]
        elif name == "zernike":
            words += [option, *(f"{k}={_num(c)}" for k, c in sorted(parse_zernike(value).items()))]
        elif name == "vectorial":  # a flag
            words += [option] if value else []
        else:
            words += [option, _num(value)]
    if psf.learn:
        words.append("--learn-psf")

    if job.spacing_um is not None:
        words += ["--spacing", *(_num(s) for s in job.spacing_um)]
    if job.origin_um is not None and any(float(o) != 0.0 for o in job.origin_um):
        raise InputError(
            f"the image's origin {tuple(float(o) for o in job.origin_um)} um has no command-line option "
            "(the command line puts voxel (0, 0, 0) at 0): crop or save the image as a file first"
        )
    for name, option in (("channel", "--channel"), ("frame", "--frame")):
        if getattr(job, name) is not None:
            words += [option, str(int(getattr(job, name)))]
    if job.iterations is not None:
        counts = job.iterations if isinstance(job.iterations, (tuple, list)) else (job.iterations,)
        words += ["--iterations", *(str(int(n)) for n in counts)]
    if job.levels is not None:
        words += ["--levels", *(str(int(f)) for f in job.levels)]
    if job.loss is not None:
        words += ["--loss", str(job.loss)]
    for name, option in (("edge_um", "--edge"), ("lr", "--lr"), ("lambda_smooth", "--lambda-smooth")):
        v = getattr(job, name)
        if v is not None:
            if not math.isfinite(float(v)):
                raise InputError(f"{option} must be finite, got {v!r}")
            words += [option, _num(v)]
    if job.device != "cpu":
        words += ["--device", str(job.device)]
    if job.backend != "auto":
        words += ["--backend", str(job.backend)]
    if job.stain != "membrane":
        words += ["--stain", str(job.stain)]
    if job.per_object:
        words.append("--per-object")
    if job.mechanics:
        words.append("--mechanics")
    if job.config:
        raise InputError(f"fit option(s) {', '.join(sorted(job.config))} have no command-line option")
    other = _unhandled_settings(job)
    if other:
        raise InputError(f"the setting(s) {', '.join(other)} have no command-line option")
    if not job.progress:
        words.append("--quiet")
    words += ["--out", str(job.out) if job.out is not None else "OUT"]
    if job.overwrite:
        words.append("--overwrite")
    return words


#: FitJob fields this module writes (or that never reach the command line: in-memory data,
#: the command itself, threads); any other field set away from its default is refused
_HANDLED = {
    "image", "image_data", "spacing_um", "origin_um", "channel", "frame", "init", "psf", "iterations",
    "levels", "loss", "edge_um", "lr", "lambda_smooth", "config", "device", "backend", "threads", "out",
    "overwrite", "command", "progress", "mechanics", "stain",
}  # fmt: skip


def _unhandled_settings(job) -> list[str]:
    import dataclasses

    out = []
    for f in dataclasses.fields(job):
        if f.name in _HANDLED:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(job, f.name) != default:
            out.append(f.name)
    return out


def shell_line(words) -> str:
    """The words as one line for a POSIX shell (quoted where needed)."""
    import shlex

    return shlex.join(str(w) for w in words)
