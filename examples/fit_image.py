"""Render a synthetic membrane image of two cells, then segment it by fitting meshes to it.

Everything goes through the Python API (the command line does the same with
``deltamic fit IMAGE --seeds seeds.csv --out DIR``):

1. ground truth: two ellipsoidal cells (trimesh, in um, image frame (z, y, x));
2. image: rendered through a Gaussian PSF matched to a confocal objective, with Poisson noise;
3. initial meshes: one sphere per seed (the cell centres), radius estimated from the image;
4. fit: :class:`deltamic_core.fit.Fitter`, coarse-to-fine;
5. outputs: mesh, labels, measurements, report in ``--out`` (optional) and the fitted volumes
   compared with the truth on stdout.

Run ``python examples/fit_image.py --quick`` for a small, fast version.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import trimesh

from deltamic_core import geometry
from deltamic_core.fit import FitConfig, Fitter
from deltamic_core.mesh import Mesh
from deltamic_core.pipeline import estimate_seed_radii, render_mesh_image
from deltamic_core.pipeline.outputs import measurement_rows, staged_directory, write_fit_outputs
from deltamic_core.psf import GaussianPSF


def ellipsoid(centre, semi_axes, subdivisions):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    m.vertices = m.vertices * np.asarray(semi_axes) + np.asarray(centre)
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small image, few iterations (for tests)")
    ap.add_argument("--out", type=Path, default=None, help="write the fit's outputs directory here")
    args = ap.parse_args(argv)

    if args.quick:
        spacing, shape, scale, iterations, subdiv, edge = (1.0, 0.75, 0.75), (12, 16, 26), 0.7, (10, 25), 2, 1.0
    else:
        spacing, shape, scale, iterations, subdiv, edge = (0.5, 0.25, 0.25), (28, 48, 80), 1.0, (60, 100), 3, 0.5
    # two cells side by side along x, slightly flattened in z as cells on a coverslip are
    extent = np.asarray(shape) * spacing
    semi = np.array([[2.6, 3.2, 3.6], [2.4, 3.0, 3.0]]) * scale
    centres = np.array(
        [
            [extent[0] / 2, extent[1] / 2, extent[2] / 2 - 4.2 * scale],
            [extent[0] / 2, extent[1] / 2 + 0.4 * scale, extent[2] / 2 + 3.6 * scale],
        ]
    )
    cells = [ellipsoid(c, s, subdiv) for c, s in zip(centres, semi)]
    truth = Mesh(
        np.concatenate([cells[0].vertices, cells[1].vertices]),
        np.concatenate([cells[0].faces, cells[1].faces + len(cells[0].vertices)]),
    )
    true_volumes = [c.volume for c in cells]

    # sigma = one voxel per axis, the command line's default (a Nyquist-sampled stack); with
    # known optics use GaussianPSF.from_optics(na=..., wavelength_um=..., n_immersion=...)
    psf = GaussianPSF(sigma_um=spacing)
    t0 = time.perf_counter()
    image = render_mesh_image(truth, shape, spacing, psf, noise="poisson", photons=50.0, background=2.0, seed=1)
    print(f"rendered {shape} voxels of {spacing} um in {time.perf_counter() - t0:.1f} s, PSF {psf.describe()}")

    # the segmentation starts from the seeds only: centres known, radii estimated from the image
    radii = estimate_seed_radii(image, spacing, centres, blur_um=spacing)
    init = geometry.seed_spheres(centres, radii, edge_um=edge)
    print("seed radii (um): " + ", ".join(f"{r:.2f}" for r in radii))

    config = FitConfig(iterations=iterations, levels=(2, 1), loss="poisson", target_edge_um=edge)
    fitter = Fitter(image, spacing, init, psf, config)
    t0 = time.perf_counter()

    def progress(step):
        if step.iteration % 20 == 0:
            print(f"  iteration {step.iteration:4d} (level x{step.factor}) loss {step.loss:.5g}")

    result = fitter.run(callback=progress)
    fit_s = time.perf_counter() - t0
    cells_rows, contacts = measurement_rows(result.mesh)
    print(f"fitted in {fit_s:.1f} s ({result.iterations} iterations)")
    errors = []
    for row, v_true in zip(cells_rows, true_volumes):
        err = row["volume_um3"] / v_true - 1
        errors.append(err)
        print(
            f"  cell {row['cell']}: volume {row['volume_um3']:.2f} um^3 (truth {v_true:.2f}, {100 * err:+.1f}%), "
            f"sphericity {row['sphericity']:.3f}"
        )
    summary = {
        "volume_rel_errors": errors,
        "fit_s": fit_s,
        "iterations": result.iterations,
        "final_loss": result.loss_history[-1],
    }
    if args.out is not None:
        with staged_directory(args.out) as tmp:
            write_fit_outputs(
                tmp,
                result.mesh,
                shape=shape,
                spacing_um=spacing,
                measurements=cells_rows,
                contacts=contacts,
                report={**summary, "loss_history": result.loss_history, "psf": result.psf_params},
            )
        print(f"outputs in {args.out}")
    print("SUMMARY " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
