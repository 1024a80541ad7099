"""Interior (volume) staining: signed per-face volume weights in the renderer and the fitter.

Truth: voxel fill fractions of the same ball computed by supersampling (no deltamic code), and
the renderer's own scalar volume term on an outward-oriented plain mesh.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from deltamic_core.fit.fitter import volume_face_weights
from deltamic_core.geometry import icosphere, merge_meshes, seed_spheres
from deltamic_core.mesh import Mesh
from deltamic_core.psf import GaussianPSF
from deltamic_core.render import Renderer

SHAPE, SPACING = (24, 40, 40), (0.5, 0.25, 0.25)
SIGMA = (0.8, 0.3, 0.3)


def _renderer():
    return Renderer(SHAPE, SPACING, GaussianPSF(sigma_um=SIGMA), dtype=torch.float64)


def _render(r, mesh, vw):
    v = torch.tensor(mesh.verts)
    f = torch.tensor(mesh.faces)
    return r.render(v, f, torch.zeros(len(f), dtype=torch.float64), volume_weight=vw).detach().numpy()


def _ball_image(center, radius, ss=4):
    axes = [(np.arange(n * ss) - (ss - 1) / 2) / ss * s for n, s in zip(SHAPE, SPACING)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    inside = (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius**2
    fill = inside.reshape(SHAPE[0], ss, SHAPE[1], ss, SHAPE[2], ss).mean(axis=(1, 3, 5))
    return ndimage.gaussian_filter(fill, [s / d for s, d in zip(SIGMA, SPACING)], mode="constant", truncate=5)


def test_rec_convention_mesh_renders_a_bright_filled_object():
    c, rad = (6.0, 5.0, 5.0), 2.5
    seed = seed_spheres([c], rad, 4)  # .rec convention: normals point INTO the cell
    r = _renderer()
    w = volume_face_weights(seed)
    assert np.all(w == -1.0)  # every face (0, 1): normal from the medium into the cell
    img = _render(r, seed, torch.tensor(w))
    truth = _ball_image(c, rad)
    assert img.min() > -1e-3 and img.max() == pytest.approx(truth.max(), rel=0.02)
    # the icosphere's volume is a bit below the ball's: compare totals with its own volume
    assert np.abs(img - truth).max() < 0.03
    # the unsigned scalar term on the same mesh is the negative (the reported failure's cause)
    assert np.allclose(_render(r, seed, 1.0), -img, atol=1e-9)
    # and on an outward plain mesh the scalar and the per-face form agree
    plain = icosphere(c, rad, 4)
    assert np.allclose(_render(r, plain, 1.0), _render(r, plain, torch.tensor(volume_face_weights(plain))), atol=1e-9)


def test_shared_faces_cancel_and_cell_weights_scale_regions():
    a = seed_spheres([(6.0, 5.0, 3.5)], 1.8, 3)
    b = seed_spheres([(6.0, 5.0, 6.5)], 1.8, 3)
    two = merge_meshes([a, b])
    r = _renderer()
    both = _render(r, two, torch.tensor(volume_face_weights(two)))
    one = _render(r, a, torch.tensor(volume_face_weights(a)))
    other = _render(r, b, torch.tensor(volume_face_weights(b)))
    assert np.allclose(both, one + other, atol=1e-9)
    half = _render(r, two, torch.tensor(volume_face_weights(two, {2: 0.5})))
    assert np.allclose(half, one + 0.5 * other, atol=1e-9)
    # a face between two cells of equal weight contributes nothing
    lab = np.array([[1, 2], [0, 1]])
    w = volume_face_weights(Mesh(np.eye(3), np.array([[0, 1, 2], [0, 2, 1]]), lab))
    assert w.tolist() == [0.0, -1.0]


def test_per_face_volume_weight_must_match_the_faces():
    seed = seed_spheres([(6.0, 5.0, 5.0)], 2.0, 2)
    with pytest.raises(ValueError, match="volume_weight per face must have"):
        _render(_renderer(), seed, torch.ones(3, dtype=torch.float64))


def _droplet(tmp_path, radius=2.6, centre=(6.0, 4.4, 4.4), seed=(6.3, 4.2, 4.6)):
    """An interior-stained ball: 3x supersampled voxel fill, scipy Gaussian blur (anisotropic),
    Poisson noise; written as a TIFF with its seeds CSV (no radius)."""
    from deltamic_core.io import write_tiff

    shape, sp, sigma = (24, 44, 44), (0.5, 0.2, 0.2), (0.8, 0.2, 0.2)
    ss = 3
    axes = [(np.arange(n * ss) - (ss - 1) / 2) / ss * s for n, s in zip(shape, sp)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    c = np.asarray(centre)
    inside = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2
    fill = inside.reshape(shape[0], ss, shape[1], ss, shape[2], ss).mean(axis=(1, 3, 5))
    img = ndimage.gaussian_filter(fill, [s / d for s, d in zip(sigma, sp)], mode="constant")
    img = np.random.default_rng(1).poisson(300 * img + 20).astype(np.float32)
    write_tiff(tmp_path / "drop.tif", img, sp)
    (tmp_path / "seeds.csv").write_text("z,y,x\n" + ",".join(map(str, seed)) + "\n")
    return img, sp, sigma, np.asarray(seed), 4.0 / 3.0 * np.pi * radius**3


def test_interior_seed_radius_estimate(tmp_path):
    from deltamic_core.pipeline import estimate_interior_radii, estimate_seed_radii

    img, sp, sigma, seed, _ = _droplet(tmp_path)
    r = estimate_interior_radii(img, sp, seed[None], blur_um=sigma)
    assert r[0] == pytest.approx(2.6, rel=0.03)
    # the membrane estimator looks for a bright shell, which a filled object does not have
    assert estimate_seed_radii(img, sp, seed[None], blur_um=sigma)[0] < 2.0


def _fit_droplet_from_the_command_line(tmp_path, *init) -> tuple[list[dict], float]:
    """``deltamic fit`` of the interior-stained droplet (``init``: the initial-mesh options);
    the rows of its measurements.csv and the true volume."""
    import csv

    from deltamic_core.cli import main

    _, _, _, _, truth = _droplet(tmp_path)
    out = tmp_path / "fit"
    fit = ["fit", str(tmp_path / "drop.tif"), *init, "--stain", "interior", "--sigma", "0.8", "0.2", "0.2"]
    rc = main([*fit, "--levels", "1", "--iterations", "15", "--quiet", "--out", str(out)])
    assert rc == 0
    with open(out / "measurements.csv") as fh:
        return list(csv.DictReader(fh)), truth


@pytest.mark.slow
def test_fit_interior_stained_droplet_from_the_command_line(tmp_path, capsys):
    from deltamic_core.cli import main

    seeds = str(tmp_path / "seeds.csv")
    rows, truth = _fit_droplet_from_the_command_line(tmp_path, "--seeds", seeds)
    # before the signed volume weights this came out as a fraction of the truth
    assert float(rows[0]["volume_um3"]) == pytest.approx(truth, rel=0.03)
    bad = main(
        ["fit", str(tmp_path / "drop.tif"), "--seeds", seeds, "--stain", "cells", "--out", str(tmp_path / "bad")]
    )
    assert bad == 2 and "--stain" in capsys.readouterr().err


def test_auto_seeds_find_one_seed_per_filled_object(tmp_path):
    from deltamic_core.pipeline import InputError, auto_seeds

    img, sp, _, _, _ = _droplet(tmp_path)
    seeds = auto_seeds(img, sp)
    assert len(seeds) == 1 and np.linalg.norm(seeds[0] - [6.0, 4.4, 4.4]) < 0.5
    # two objects, one dimmer: both found, brightest first
    axes = [np.arange(n) * s for n, s in zip((24, 44, 60), sp)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    two = np.zeros(zz.shape)
    for c, level in (((6.0, 4.4, 3.5), 1.0), ((6.0, 4.4, 8.5), 0.6)):
        two += level * (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= 2.0**2)
    found = auto_seeds(ndimage.gaussian_filter(two, (1.6, 1, 1)), sp)
    assert len(found) == 2
    assert np.allclose(found[0], (6.0, 4.4, 3.5), atol=0.5) and np.allclose(found[1], (6.0, 4.4, 8.5), atol=0.5)
    with pytest.raises(InputError, match="no bright objects"):
        auto_seeds(np.full((8, 8, 8), 3.0), sp)


def test_auto_seeds_option_needs_an_interior_stain(tmp_path, capsys):
    from deltamic_core.cli import main

    _droplet(tmp_path)
    rc = main(["fit", str(tmp_path / "drop.tif"), "--auto-seeds", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--stain interior" in err
    assert not (tmp_path / "o").exists()
    rc = main(
        [
            "fit",
            str(tmp_path / "drop.tif"),
            "--auto-seeds",
            "--seeds",
            str(tmp_path / "seeds.csv"),
            "--stain",
            "interior",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "exactly one of" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_with_auto_seeds(tmp_path):
    rows, truth = _fit_droplet_from_the_command_line(tmp_path, "--auto-seeds")
    assert len(rows) == 1 and float(rows[0]["volume_um3"]) == pytest.approx(truth, rel=0.03)
