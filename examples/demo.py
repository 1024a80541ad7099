"""The main job on bundled data: segment a synthetic 3-cell embryo stack by inverse rendering.

1. Ground truth: the bundled real embryo segmentation (``Sample01_007.rec``, 3 cells with shared
   membranes), scaled to micrometres.
2. Image: its membranes (shared ones twice as bright) rendered through an anisotropic Gaussian
   PSF on anisotropic voxels, with Poisson noise -> ``OUT/embryo.tif`` (ImageJ metadata).
3. Seeds: one point per cell (the true centroids) -> ``OUT/seeds.csv`` (z,y,x in um; radii are
   estimated from the image, as a user would do it).
4. Fit: exactly the command line a user runs, ``deltamic fit OUT/embryo.tif --seeds
   OUT/seeds.csv --out OUT/fit``, which writes mesh.rec/.ply, labels.tif, measurements.csv,
   contacts.csv and report.json.
5. Check against the truth: per-cell IoU and volume error, and ``OUT/overview.png`` (orthogonal
   slices of the stack with the fitted cell outlines).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np

from deltamic_core import cli, geometry, pipeline
from deltamic_core.io import atomic_write, read_mesh, write_tiff
from deltamic_core.psf import GaussianPSF

SPACING = (0.5, 0.25, 0.25)  # um (z, y, x): z step twice the pixel size
SIGMA = (0.6, 0.25, 0.25)  # um: PSF standard deviations, ~ a confocal section at NA 1.0
UNIT_UM = 0.08  # the .rec is in voxel units of its source stack; this gives a ~16 um embryo
MARGIN_UM = 2.0


def truth_mesh():
    ref = resources.files("deltamic_core") / "data" / "Sample01_007.rec"
    with resources.as_file(ref) as path:
        mesh = read_mesh(path, spacing_um=(UNIT_UM,) * 3)
    lo = mesh.verts.min(0)
    mesh.verts = mesh.verts - lo + MARGIN_UM
    shape = tuple(int(np.ceil((h + MARGIN_UM) / s)) + 1 for h, s in zip(mesh.verts.max(0), SPACING))
    return mesh, shape


def overview_png(path, image, labels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zc, yc, xc = (n // 2 for n in image.shape)
    views = [
        (image[zc], labels[zc], (SPACING[1], SPACING[2]), "z slice (y, x)"),
        (image[:, yc], labels[:, yc], (SPACING[0], SPACING[2]), "y slice (z, x)"),
        (image[:, :, xc], labels[:, :, xc], (SPACING[0], SPACING[1]), "x slice (z, y)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
    for ax, (img, lab, (sr, sc), title) in zip(axes, views):
        # pixel coordinates for both the image and the contours; the aspect shows physical size
        ax.imshow(img, cmap="gray", interpolation="nearest", aspect=sr / sc)
        for cell in np.unique(lab[lab > 0]):
            ax.contour((lab == cell).astype(float), levels=[0.5], colors=[plt.cm.tab10(int(cell) % 10)], linewidths=1.2)
        ax.set_title(f"{title}, voxels")
    fig.suptitle("synthetic embryo stack with the fitted cells (deltamic fit)")
    fig.tight_layout()
    with atomic_write(path, mode="path") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    ap.add_argument("--iterations", type=int, default=None, help="iterations per level (default: the fitter's)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    mesh, shape = truth_mesh()
    psf = GaussianPSF(sigma_um=SIGMA).requires_grad_(False)
    image = pipeline.render_mesh_image(mesh, shape, SPACING, psf, noise="poisson", photons=60.0, background=5.0, seed=1)
    write_tiff(out / "embryo.tif", image, SPACING)
    table = geometry.measure(mesh)
    with atomic_write(out / "seeds.csv", mode="w") as fh:
        w = csv.writer(fh)
        w.writerow(["z", "y", "x"])
        for z, y, x in zip(table["centroid_z_um"], table["centroid_y_um"], table["centroid_x_um"]):
            w.writerow([f"{z:.3f}", f"{y:.3f}", f"{x:.3f}"])
    print(
        f"stack {shape} at {SPACING} um, {len(mesh.faces)}-face ground truth, rendered in {time.perf_counter() - t0:.1f} s"
    )

    fit_dir = out / "fit"
    command = ["fit", str(out / "embryo.tif"), "--seeds", str(out / "seeds.csv"), "--out", str(fit_dir)]
    command += ["--sigma", *map(str, SIGMA)]
    if args.iterations:
        command += ["--iterations", str(args.iterations)]
    if fit_dir.exists():
        import shutil

        shutil.rmtree(fit_dir)
    print("deltamic " + " ".join(command))
    code = cli.main(command)
    if code != 0:
        raise SystemExit(code)

    # check against the truth
    truth = geometry.label_image(mesh, shape, SPACING)
    import tifffile

    fitted = tifffile.imread(fit_dir / "labels.tif")
    report = json.loads((fit_dir / "report.json").read_text())
    print("\ncell | IoU vs truth | volume fit / truth (um^3) | error")
    rows = []
    for cell in range(1, int(truth.max()) + 1):
        a, b = truth == cell, fitted == cell
        iou = (a & b).sum() / max((a | b).sum(), 1)
        vt, vf = a.sum() * np.prod(SPACING), b.sum() * np.prod(SPACING)
        rows.append({"cell": cell, "iou": float(iou), "volume_truth_um3": float(vt), "volume_fit_um3": float(vf)})
        print(f"{cell:4d} | {iou:12.3f} | {vf:10.1f} / {vt:10.1f} | {100 * (vf - vt) / vt:+.1f}%")
    with atomic_write(out / "accuracy.json", mode="w") as fh:
        json.dump({"cells": rows, "fit_seconds": report.get("timings", {})}, fh, indent=2)
    overview_png(out / "overview.png", image, fitted)
    print(
        f"\nwrote {out}/embryo.tif, seeds.csv, fit/ (mesh.rec, mesh.ply, labels.tif, measurements.csv, "
        f"contacts.csv, report.json), accuracy.json, overview.png in {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
