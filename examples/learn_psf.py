"""Recover the width of a Gaussian PSF from the image of an object of known shape.

Calibration in the spirit of a bead measurement, with a surface instead of a point: a
fluorescent spherical shell (think of a giant unilamellar vesicle) of known radius is imaged
through an anisotropic Gaussian PSF. Starting from a PSF 60% too wide, the fitter learns the
PSF together with the mesh (``FitConfig(learn_psf=True)``); the recovered sigma is compared
with the truth.

Run ``python examples/learn_psf.py --quick`` for a small, fast version.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from deltamic_core import geometry
from deltamic_core.fit import FitConfig, Fitter
from deltamic_core.pipeline import render_mesh_image
from deltamic_core.psf import GaussianPSF


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small image, few iterations (for tests)")
    args = ap.parse_args(argv)

    if args.quick:
        spacing, shape, radius, iterations, edge = (0.6, 0.3, 0.3), (14, 24, 24), 2.0, 40, 0.6
    else:
        spacing, shape, radius, iterations, edge = (0.3, 0.1, 0.1), (40, 80, 80), 2.5, 200, 0.3
    true_sigma = np.array([0.7, 0.3, 0.3])  # um, (z, y, x)
    centre = 0.5 * (np.asarray(shape) - 1) * spacing
    shell = geometry.seed_spheres(centre[None], np.array([radius]), edge_um=edge)
    image = render_mesh_image(
        shell, shape, spacing, GaussianPSF(sigma_um=tuple(true_sigma)), noise="poisson", photons=200.0, seed=3
    )

    guess = GaussianPSF(sigma_um=tuple(1.6 * true_sigma))
    config = FitConfig(iterations=iterations, levels=(1,), learn_psf=True, psf_lr=0.03, loss="poisson")
    t0 = time.perf_counter()
    result = Fitter(image, spacing, shell, guess, config).run()
    fit_s = time.perf_counter() - t0
    sigma = np.asarray(result.psf_params["sigma_um"], dtype=float)
    rel = sigma / true_sigma - 1
    print(
        f"true sigma (z, y, x) = {true_sigma.round(3).tolist()} um; start {np.round(1.6 * true_sigma, 3).tolist()} um"
    )
    print(
        f"learnt sigma         = {sigma.round(3).tolist()} um ({', '.join(f'{100 * r:+.1f}%' for r in rel)}) "
        f"in {fit_s:.1f} s, {result.iterations} iterations"
    )
    summary = {
        "true_sigma_um": true_sigma.tolist(),
        "learnt_sigma_um": sigma.tolist(),
        "rel_error": rel.tolist(),
        "fit_s": fit_s,
    }
    print("SUMMARY " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
