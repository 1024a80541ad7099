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


# ----------------------------------------------------------------------------------------------
# --stain both: the cytoplasm level solved with the gain and the background
# ----------------------------------------------------------------------------------------------
def test_solve_two_levels_matches_numpy_least_squares():
    from deltamic_core.fit.losses import solve_two_levels

    rng = np.random.default_rng(3)
    m, v = rng.random((6, 7, 8)), rng.random((6, 7, 8))
    obs = 2.0 * m + 0.3 * v + 5.0 + 0.01 * rng.normal(size=m.shape)
    w = rng.random(m.shape)
    a, c, b = solve_two_levels(torch.tensor(m), torch.tensor(v), torch.tensor(obs), torch.tensor(w))
    sw = np.sqrt(w.ravel())
    design = np.stack([m.ravel(), v.ravel(), np.ones(m.size)], axis=1) * sw[:, None]
    ref = np.linalg.lstsq(design, obs.ravel() * sw, rcond=None)[0]
    assert np.allclose([a, c, b], ref, rtol=1e-9, atol=1e-9)
    # a negative level is not physical: the best fit with that level at 0
    a, c, b = solve_two_levels(torch.tensor(m), torch.tensor(v), torch.tensor(2.0 * m - 0.5 * v + 1.0))
    assert c == 0.0
    g, b0 = np.polyfit(m.ravel(), (2.0 * m - 0.5 * v + 1.0).ravel(), 1)
    assert a == pytest.approx(g, rel=1e-9) and b == pytest.approx(b0, rel=1e-9)


def _membrane_and_cytoplasm(level, radius=2.4, centre=(6.0, 4.6, 4.6), thickness=0.25, ss=4, seed=2):
    """A cell with a membrane (shell of `thickness` um of density 1/thickness: surface density
    1 per um^2) and a cytoplasm of density `level` per um^3: supersampled fill, scipy blur,
    Poisson noise (no deltamic code)."""
    shape, sp, sigma = (24, 46, 46), (0.5, 0.2, 0.2), (0.6, 0.2, 0.2)
    axes = [(np.arange(n * ss) - (ss - 1) / 2) / ss * s for n, s in zip(shape, sp)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    dens = (np.abs(r - radius) < thickness / 2) / thickness + level * (r < radius)
    dens = dens.reshape(shape[0], ss, shape[1], ss, shape[2], ss).mean(axis=(1, 3, 5))
    img = ndimage.gaussian_filter(dens, [s / d for s, d in zip(sigma, sp)], mode="constant")
    img = np.random.default_rng(seed).poisson(400 * img / img.max() + 10).astype(np.float32)
    return img, sp, sigma


@pytest.mark.slow
@pytest.mark.parametrize(
    "level",
    [
        # measured 2026-12-02: a low level comes out 0.19 for 0.15 (+27%): issue 16 is open on it
        pytest.param(
            0.15, marks=pytest.mark.xfail(strict=True, reason="low cytoplasm level biased high (0.19 for 0.15)")
        ),
        0.5,
    ],
)
def test_stain_both_fits_the_cytoplasm_level(level):
    from deltamic_core.pipeline import FitJob, InitSpec, PSFSpec, run

    img, sp, sigma = _membrane_and_cytoplasm(level)
    job = FitJob(
        image_data=img,
        spacing_um=sp,
        init=InitSpec("seeds", data=(np.array([[6.2, 4.4, 4.8]]), np.array([1.8]))),
        psf=PSFSpec("gaussian", {"sigma_um": sigma}),
        stain="both",
        levels=(2, 1),
        iterations=(20, 20),
        progress=False,
    )
    res = run(job).result
    assert res.volume_level == pytest.approx(level, rel=0.15)
    vol = float(__import__("deltamic_core.geometry", fromlist=["measure"]).measure(res.mesh)["volume_um3"][0])
    assert vol == pytest.approx(4 / 3 * np.pi * 2.4**3, rel=0.04)


def test_stain_both_solves_the_level_and_interior_has_no_membrane():
    from deltamic_core.pipeline import FitJob

    both = FitJob(stain="both").fit_config()
    assert both.volume_level == "solve" and both.membrane_weight == 1.0
    inner = FitJob(stain="interior").fit_config()
    assert inner.volume_level == "fixed" and inner.membrane_weight == 0.0 and inner.volume_weight == 1.0
    from deltamic_core.fit import FitConfig

    with pytest.raises(ValueError, match="volume_level"):
        FitConfig(volume_level="learn")
    with pytest.raises(ValueError, match="needs a membrane"):
        FitConfig(volume_level="solve", membrane_weight=0.0, volume_weight=1.0)


# ----------------------------------------------------------------------------------------------
# many objects: one crop per object (pipeline.objects)
# ----------------------------------------------------------------------------------------------
FIELD_SP, FIELD_SIGMA = (0.5, 0.25, 0.25), (0.6, 0.25, 0.25)


def _field(centres, radius=2.0, shape=(20, 40, 100), ss=3, seed=4):
    axes = [(np.arange(n * ss) - (ss - 1) / 2) / ss * s for n, s in zip(shape, FIELD_SP)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    fill = np.zeros(zz.shape, np.float32)
    for c in centres:
        fill += ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= radius**2
    fill = fill.reshape(shape[0], ss, shape[1], ss, shape[2], ss).mean(axis=(1, 3, 5))
    img = ndimage.gaussian_filter(fill, [s / d for s, d in zip(FIELD_SIGMA, FIELD_SP)], mode="constant")
    return np.random.default_rng(seed).poisson(200 * img + 10).astype(np.float32)


def test_object_crops_do_not_grow_with_the_field():
    from deltamic_core.pipeline.objects import plan_object_crops

    seeds = seed_spheres([(5.0, 5.0, 5.0), (5.0, 5.0, 9.5), (5.0, 5.0, 20.0)], 2.0, 2)
    small = plan_object_crops(seeds, (24, 40, 100), FIELD_SP, psf_reach_um=(1.5, 0.6, 0.6))
    large = plan_object_crops(seeds, (40, 160, 400), FIELD_SP, psf_reach_um=(1.5, 0.6, 0.6))
    assert [c.shape for c in small] == [c.shape for c in large]
    assert [c.cells for c in small] == [[1, 2], [2, 1], [3]]  # neighbours within reach share a crop
    # every crop holds its cells' initial spheres with the margin (1 um) and the PSF's reach
    for crop in small:
        lo = np.asarray(crop.origin_um)
        hi = lo + (np.asarray(crop.shape) - 1) * np.asarray(FIELD_SP)
        for c in crop.cells:
            v = seeds.verts[np.unique(seeds.faces[(seeds.labels == c).any(axis=1)])]
            assert np.all(v.min(0) - lo >= np.array([2.5, 1.6, 1.6]) - 0.5 * np.asarray(FIELD_SP))
            assert np.all(hi - v.max(0) >= np.array([2.5, 1.6, 1.6]) - 0.5 * np.asarray(FIELD_SP))


@pytest.mark.slow
def test_per_object_fit_matches_each_object_fitted_alone():
    import gpytoolbox

    from deltamic_core.geometry import cell_surface, measure
    from deltamic_core.pipeline import FitJob, InitSpec, PSFSpec, run

    a, b = (5.0, 5.0, 6.0), (5.2, 4.8, 18.5)
    common = dict(
        spacing_um=FIELD_SP,
        psf=PSFSpec("gaussian", {"sigma_um": FIELD_SIGMA}),
        stain="interior",
        levels=(2, 1),
        iterations=(20, 15),
        progress=False,
    )
    seeds = np.array([[5.2, 5.3, 6.2], [5.0, 4.6, 18.2]])
    both = run(
        FitJob(
            image_data=_field([a, b]),
            init=InitSpec("seeds", data=(seeds, np.array([1.5, 1.5]))),
            per_object=True,
            **common,
        )
    ).result.mesh
    assert both.n_cells == 2
    for k, c in enumerate((a, b)):
        alone = run(
            FitJob(image_data=_field([c]), init=InitSpec("seeds", data=(seeds[k : k + 1], np.array([1.5]))), **common)
        ).result.mesh
        got, ref = cell_surface(both, k + 1), cell_surface(alone, 1)
        v_got, v_ref = float(measure(got)["volume_um3"][0]), float(measure(ref)["volume_um3"][0])
        assert v_got == pytest.approx(v_ref, rel=0.01)
        assert v_ref == pytest.approx(4 / 3 * np.pi * 8.0, rel=0.03)
        d = np.sqrt(gpytoolbox.squared_distance(got.verts, ref.verts, ref.faces.astype(np.int32), use_aabb=True)[0])
        assert d.mean() < 0.03 and d.max() < 0.15


def test_per_object_needs_a_filled_stain(tmp_path, capsys):
    from deltamic_core.cli import main

    _droplet(tmp_path)
    out = tmp_path / "o"
    rc = main(
        ["fit", str(tmp_path / "drop.tif"), "--seeds", str(tmp_path / "seeds.csv"), "--per-object", "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--per-object" in err and "--stain interior" in err
    assert not out.exists()
