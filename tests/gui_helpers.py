"""Helpers for the napari GUI tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np


def click(qtbot, button) -> None:
    """A left click on ``button``, as the user does it (it must be enabled)."""
    from qtpy.QtCore import Qt

    assert button.isEnabled(), f"the {button.text()!r} button is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def sphere_stack(tmp_path):
    """A TIFF of one noisy membrane sphere (r = 2.5 um) and a seeds CSV 0.4 um off its centre."""
    from deltamic_core.geometry import seed_spheres
    from deltamic_core.io import write_tiff
    from deltamic_core.pipeline import render_mesh_image
    from deltamic_core.psf import GaussianPSF

    spacing, shape = (0.5, 0.25, 0.25), (16, 32, 32)
    centre = (np.asarray(shape) - 1) * spacing / 2
    truth = seed_spheres(centre[None], np.array([2.5]))
    img = render_mesh_image(
        truth, shape, spacing, GaussianPSF(sigma_um=spacing), noise="poisson", photons=50.0, background=2.0, seed=3
    )
    path = tmp_path / "sphere.tif"
    write_tiff(path, img, spacing)
    seed = centre + np.array([0.0, 0.4, -0.3])
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("z,y,x\n" + ",".join(f"{v:.6f}" for v in seed) + "\n")
    return path, seeds, seed
