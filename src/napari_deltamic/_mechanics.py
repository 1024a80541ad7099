"""Layer data for showing the mechanics of a mesh: a Surface coloured by curvature or tension.

The surface is split along the triple lines (one vertex copy per interface, see
:func:`deltamic_core.geometry.mechanics.interface_surfaces`) so every interface is coloured by
its own values; the layer's features table has one row per vertex (interface, curvatures,
tension). Building the data needs no viewer; the widget adds the tuple with
``viewer._add_layer_from_data(*tup)`` or ``viewer.add_surface(data, **kwargs)``.
"""

from __future__ import annotations

import numpy as np

from deltamic_core.geometry.mechanics import MechanicsResult, interface_surfaces, mechanics
from deltamic_core.mesh import Mesh

COLOR_BY = ("mean_curvature", "gaussian_curvature", "tension")


def mechanics_layer_data(
    mesh: Mesh, result: MechanicsResult | None = None, *, color_by: str = "mean_curvature", name: str = "mechanics"
) -> tuple:
    """A napari ``LayerDataTuple`` (data, kwargs, "surface") coloured by ``color_by``.

    Curvatures use a diverging colour map with limits symmetric about 0 (the 2nd-98th
    percentile of |value|); tensions a sequential one over their range.
    """
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {', '.join(COLOR_BY)}, got {color_by!r}")
    if result is None:
        result = mechanics(mesh)
    s = interface_surfaces(mesh, result)
    values = np.nan_to_num(np.asarray(s[color_by], dtype=np.float64))
    if color_by == "tension":
        finite = s["tension"][np.isfinite(s["tension"])]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        colormap = "viridis"
    else:
        lim = float(np.percentile(np.abs(values), 98)) if len(values) else 1.0
        lo, hi = -(lim or 1.0), (lim or 1.0)
        colormap = "coolwarm"
    features = {
        "interface": [f"{a}-{b}" for a, b in zip(s["cell_a"], s["cell_b"])],
        "vertex": s["vertex"],
        "mean_curvature_per_um": s["mean_curvature"],
        "gaussian_curvature_per_um2": s["gaussian_curvature"],
        "tension": s["tension"],
    }
    kwargs = {
        "name": name,
        "colormap": colormap,
        "contrast_limits": (lo, hi),
        "features": features,
        "metadata": {"mechanics_color_by": color_by, "force_residual_rms": result.residual_rms},
    }
    return ((s["verts"].astype(np.float32), s["faces"].astype(np.int64), values.astype(np.float32)), kwargs, "surface")
