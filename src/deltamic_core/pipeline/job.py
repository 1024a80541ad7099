""":class:`FitJob`: everything one fit needs, as plain picklable data.

The command line (:mod:`deltamic_core.cli`), the napari widget and batch tasks all describe a
fit as a ``FitJob`` and hand it to :func:`deltamic_core.pipeline.run` or
:func:`~deltamic_core.pipeline.fit_to_directory`; options left at ``None`` take the fitter's
defaults (:class:`deltamic_core.fit.FitConfig`), so every front end fits the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .inputs import InitSpec
from .psfspec import PSFSpec

#: FitJob field -> the command-line option (messages name what the user can change)
OPTION = {
    "iterations": "--iterations",
    "levels": "--levels",
    "loss": "--loss",
    "edge_um": "--edge",
    "device": "--device",
    "backend": "--backend",
    "channel": "--channel",
    "frame": "--frame",
    "spacing_um": "--spacing",
}


STAINS = ("membrane", "interior", "both")


def stain_weights(stain: str) -> dict:
    """The FitConfig fields of a ``--stain``: the membrane and volume weights (and, for
    "both", the volume level solved with the gain). An image rendered with the same
    membrane_weight and volume_weight is what a fit of that stain models."""
    if stain not in STAINS:
        raise InputError(f"--stain must be one of {', '.join(STAINS)}, got {stain!r}")
    if stain == "interior":
        return dict(membrane_weight=0.0, volume_weight=1.0)
    if stain == "both":
        return dict(volume_weight=0.2, volume_level="solve")
    return {}


# The iterations per level (4, 2, 1) of an interior-stained fit unless the user gives them.
# Measured 2026-12-04 (benchmarks/bench_interior.py, 1 thread): 24 touching nuclei, mean
# distance 0.057 um vs 0.073 with the membrane defaults (baseline 0.120); the bleaching
# time-lapse's worst frame 1.53% vs 1.86% (bead Gaussian), 0.83% with the true confocal optics.
# Filled objects converge early; more steps move the unresolved contacts between same-brightness
# neighbours (each pair's contact drifts as a whole).
INTERIOR_ITERATIONS = (20, 30, 10)


def default_iterations(stain: str) -> tuple:
    """The iterations per level (of the default levels) a fit of ``stain`` runs when the user
    gives neither --iterations nor --levels."""
    from ..fit import FitConfig

    if stain == "interior":
        return INTERIOR_ITERATIONS
    d = FitConfig()
    return tuple(d.iterations_for_level(i) for i in range(len(d.levels)))


@dataclass
class FitJob:
    """One fit: image, initial meshes, PSF, fit options, where to compute and where to write.

    Attributes
    ----------
    image : path of the image file (ZYX, TZYX with ``frame``), or None with ``image_data``
    image_data : (Z, Y, X) array instead of a file (then ``spacing_um`` is required)
    spacing_um : voxel size (z, y, x) in um; overrides the file's metadata
    origin_um : centre of voxel (0, 0, 0) in um
    channel, frame : channel index of a multi-channel file; time point of a TZYX file
    init : :class:`InitSpec` (mesh, seeds or labels)
    psf : :class:`PSFSpec` (model, parameters, learn flag)
    iterations : iterations at every level (int) or one count per level (tuple); None: the defaults
    levels, loss, edge_um, lr, lambda_smooth : FitConfig fields (None: default)
    config : further FitConfig fields by name
    device, backend : "cpu"/"cuda", mesh Fourier transform backend ("auto")
    threads : torch threads for the fit (None: leave torch's setting)
    out : output directory; overwrite : may replace an earlier result there
    command : the command line that made the job (for report.json)
    progress : show a progress bar
    stain : "membrane" (surface signal), "interior" (filled objects: nuclei, cytoplasm,
        droplets; volume signal only) or "both" (membrane plus a cytoplasm level relative to the membrane density, solved
        with the gain and background every step from 0.2 per um; ``FitResult.volume_level``)
    per_object : fit every cell in its own crop, its neighbours' light held as a fixed image, then
        refit it at full resolution with all its neighbours fitted
        (:func:`~deltamic_core.pipeline.objects.fit_objects`): for many separate objects
        (nuclei), the cost then grows with the objects, not with the field
    mechanics : also write the mechanics analysis of the fitted mesh (mechanics.csv,
        junctions.csv, curvature.csv, curvature vertex properties in mesh.ply)
    """

    image: str | None = None
    image_data: np.ndarray | None = None
    spacing_um: tuple | None = None
    origin_um: tuple = (0.0, 0.0, 0.0)
    channel: int | None = None
    frame: int | None = None
    init: InitSpec | None = None
    psf: PSFSpec = field(default_factory=PSFSpec)
    iterations: int | tuple | None = None
    levels: tuple | None = None
    loss: str | None = None
    edge_um: float | None = None
    lr: float | None = None
    lambda_smooth: float | None = None
    config: dict = field(default_factory=dict)
    device: str = "cpu"
    backend: str = "auto"
    threads: int | None = None
    out: str | None = None
    overwrite: bool = False
    command: list | None = None
    progress: bool = True
    mechanics: bool = False
    stain: str = "membrane"
    per_object: bool = False

    def replace(self, **changes) -> FitJob:
        return dataclasses.replace(self, **changes)

    def to_cli_args(self, *, image: str | None = None, init: str | None = None) -> list[str]:
        """The equivalent ``deltamic fit`` command line (``image``/``init``: file names for an
        in-memory image / initial mesh); see :func:`~deltamic_core.pipeline.cli_args.fit_command`."""
        from .cli_args import fit_command

        return fit_command(self, image=image, init=init)

    def for_item(self, path: str, frame: int | None, stem: str) -> FitJob:
        """The job of one batch item: its file and frame, ``{stem}`` substituted in the init path."""
        return self.replace(image=str(path), frame=frame, init=self.init.for_stem(stem) if self.init else None)

    def fit_config(self):
        """The :class:`~deltamic_core.fit.FitConfig` of this job (unset options keep the defaults)."""
        from ..fit import FitConfig

        kw = {"learn_psf": bool(self.psf.learn), "device": self.device, "backend": self.backend}
        for name, cfg_name in (
            ("iterations", "iterations"),
            ("loss", "loss"),
            ("edge_um", "target_edge_um"),
            ("lr", "lr"),
            ("lambda_smooth", "lambda_smooth"),
        ):
            if getattr(self, name) is not None:
                kw[cfg_name] = getattr(self, name)
        if self.levels is not None:
            kw["levels"] = tuple(self.levels)
        kw.update(stain_weights(self.stain))
        if self.stain == "interior":
            if self.iterations is None and self.levels is None and "iterations" not in self.config:
                kw["iterations"] = INTERIOR_ITERATIONS
        kw.update(self.config)
        names = {f.name for f in dataclasses.fields(FitConfig)}
        unknown = sorted(k for k in kw if k not in names)
        if unknown:
            raise InputError(f"unknown fit option(s): {', '.join(unknown)}")
        try:
            return FitConfig(**kw)
        except (TypeError, ValueError) as exc:
            # FitConfig names its fields; say it in command-line terms
            raise InputError(
                str(exc)
                .replace("FitConfig.levels", "--levels")
                .replace("FitConfig.iterations", "--iterations")
                .replace("FitConfig.", "fit option ")
            ) from None
