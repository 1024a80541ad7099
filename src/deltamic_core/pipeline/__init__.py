"""The fit pipeline shared by the command line, the napari plugin and batch runs.

Data flow: io -> geometry/psf -> meshft -> render -> fit -> **pipeline** -> {cli, napari, batch}.
A fit is described by a :class:`FitJob` (plain, picklable data); :func:`prepare` checks its
inputs, :func:`run` fits in memory, :func:`fit_to_directory` writes the outputs directory.
Library code raises :class:`InputError` (a ValueError) for anything the user can fix.
"""

from __future__ import annotations

from .errors import FitFailedError, InputError, InputWarning, PipelineError, one_line
from .inputs import (
    InitSpec,
    auto_seeds,
    check_inside,
    estimate_interior_radii,
    estimate_seed_radii,
    initial_mesh,
    load_image,
    read_label_image,
    read_mesh_file,
    read_seeds,
)
from .job import FitJob
from .psfspec import PSF_BUILDERS, PSFSpec, make_psf, parse_zernike, psf_width_um, register_psf
from .run import (
    FitOutcome,
    Prepared,
    check_device,
    fit_and_write,
    fit_steps,
    fit_to_directory,
    prepare,
    run,
    run_fit,
    warm_up,
)
from .synthetic import place_target, render_mesh_image, surface_distance

__all__ = [
    "FitFailedError",
    "InputError",
    "InputWarning",
    "PipelineError",
    "one_line",
    "InitSpec",
    "check_inside",
    "auto_seeds",
    "estimate_interior_radii",
    "estimate_seed_radii",
    "initial_mesh",
    "load_image",
    "read_label_image",
    "read_mesh_file",
    "read_seeds",
    "FitJob",
    "PSF_BUILDERS",
    "PSFSpec",
    "make_psf",
    "parse_zernike",
    "psf_width_um",
    "register_psf",
    "FitOutcome",
    "Prepared",
    "check_device",
    "fit_and_write",
    "fit_steps",
    "fit_to_directory",
    "prepare",
    "run",
    "run_fit",
    "warm_up",
    "place_target",
    "render_mesh_image",
    "surface_distance",
]
