"""Shape inference: fit triangle meshes to 3D fluorescence stacks by differentiable rendering.

Public names: :class:`FitConfig`, :class:`Fitter`, :class:`StepResult`, :class:`FitResult`;
the parts (losses, photometric solve, large-steps preconditioner, vertex Adam) are exported
for reuse and testing.
"""

from __future__ import annotations

from .config import FitConfig
from .fitter import FitCancelled, FitDivergedError, FitResult, Fitter, StepResult
from .levels import BlockAveragedPSF, block_average
from .losses import (
    FieldStats,
    ObservedStats,
    intensity_weight,
    poisson_nll,
    robust_normalise,
    solve_photometric,
    solve_photometric_field,
    weighted_mse,
)
from .optim import VertexAdam
from .precondition import LaplacianPreconditioner, mesh_laplacian

__all__ = [
    "FitConfig",
    "Fitter",
    "StepResult",
    "FitResult",
    "FitDivergedError",
    "FitCancelled",
    "block_average",
    "BlockAveragedPSF",
    "intensity_weight",
    "robust_normalise",
    "weighted_mse",
    "poisson_nll",
    "solve_photometric",
    "ObservedStats",
    "solve_photometric_field",
    "FieldStats",
    "LaplacianPreconditioner",
    "mesh_laplacian",
    "VertexAdam",
]
