"""Many separate filled objects, one crop per object (``pipeline.objects``): crops that do not
grow with the field, and a per-object fit that matches each object fitted alone (images made
by supersampled fills and scipy blurs, no deltamic code)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from deltamic_core.geometry import seed_spheres

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


def _interior_job(psf_spec):
    """The FitJob settings of the per-object fits here (interior stain, two short levels)."""
    return dict(
        spacing_um=FIELD_SP,
        psf=psf_spec("gaussian", {"sigma_um": FIELD_SIGMA}),
        stain="interior",
        levels=(2, 1),
        iterations=(20, 15),
        progress=False,
    )


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
    common = _interior_job(PSFSpec)
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
        alone = run(  # the crops solve a constant gain and background: the reference does too
            FitJob(
                image_data=_field([c]),
                init=InitSpec("seeds", data=(seeds[k : k + 1], np.array([1.5]))),
                config={"photometric_field": "constant"},
                **common,
            )
        ).result.mesh
        got, ref = cell_surface(both, k + 1), cell_surface(alone, 1)
        v_got, v_ref = float(measure(got)["volume_um3"][0]), float(measure(ref)["volume_um3"][0])
        assert v_got == pytest.approx(v_ref, rel=0.01)
        assert v_ref == pytest.approx(4 / 3 * np.pi * 8.0, rel=0.03)
        d = np.sqrt(gpytoolbox.squared_distance(got.verts, ref.verts, ref.faces.astype(np.int32), use_aabb=True)[0])
        assert d.mean() < 0.03 and d.max() < 0.15


def test_fixed_neighbour_image_is_the_blurred_fill():
    """The neighbours' light held fixed in a crop is their filled volume blurred by the PSF: it
    matches a supersampled fill blurred by scipy (no deltamic rendering in the reference)."""
    from deltamic_core.fit import FitConfig
    from deltamic_core.geometry import cell_surface
    from deltamic_core.pipeline.objects import _cells_image, plan_object_crops
    from deltamic_core.psf import GaussianPSF

    centre = (5.0, 5.0, 9.5)
    seeds = seed_spheres([(5.0, 5.0, 5.0), centre], 2.0, 4)
    crop = plan_object_crops(seeds, (20, 40, 100), FIELD_SP, psf_reach_um=(1.8, 0.75, 0.75), neighbours=False)[0]
    got = _cells_image([cell_surface(seeds, 2)], crop, FIELD_SP, GaussianPSF(FIELD_SIGMA), FitConfig())
    axes = [(np.arange(n * 3) - 1) / 3 * s for n, s in zip((20, 40, 100), FIELD_SP)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    fill = (r <= 2.0).reshape(20, 3, 40, 3, 100, 3).mean(axis=(1, 3, 5))
    ref = ndimage.gaussian_filter(fill, [s / d for s, d in zip(FIELD_SIGMA, FIELD_SP)], mode="constant")[crop.slices]
    assert got.shape == ref.shape
    # the neighbour's light reaches into the object's crop, and it is the blurred fill there
    assert ref.max() > 0.5
    assert np.abs(got - ref).max() < 0.06  # the faceted sphere (4 subdivisions) and 3x supersampling
    assert abs(got.sum() / ref.sum() - 1) < 0.01


@pytest.mark.slow
def test_touching_objects_are_fitted_once_with_the_neighbours_light_held_fixed():
    """Two filled spheres 0.6 um apart (their blurs overlap): every object is fitted once (its
    crop holds it alone) and both volumes come out within 2% of the truth."""
    from deltamic_core.geometry import cell_surface, measure
    from deltamic_core.pipeline import FitJob, InitSpec, PSFSpec, run

    a, b = (5.0, 5.0, 6.0), (5.0, 5.0, 10.6)
    out = run(
        FitJob(
            image_data=_field([a, b], shape=(20, 40, 68)),
            **_interior_job(PSFSpec),
            init=InitSpec("seeds", data=(np.array([[5.2, 5.3, 6.2], [4.9, 4.8, 10.3]]), np.array([1.5, 1.5]))),
            per_object=True,
        )
    )
    assert [c["cells"] for c in out.timings["crops"]] == [1, 1]
    m = out.result.mesh
    for k, c in enumerate((a, b)):
        s = cell_surface(m, k + 1)
        assert float(measure(s)["volume_um3"][0]) == pytest.approx(4 / 3 * np.pi * 8.0, rel=0.02)
        r = np.linalg.norm(s.verts - np.asarray(c), axis=1)
        assert np.abs(r - 2.0).mean() < 0.04


def test_fitted_neighbours_are_rendered_in_one_render_with_their_gains(monkeypatch):
    """The fixed image of several fitted neighbours is one render whose per-face volume weights
    carry each neighbour's gain: it equals the sum of the neighbours rendered one by one (float
    tolerance) and the gain-weighted blurred fills (scipy, no deltamic rendering)."""
    import deltamic_core.render as render
    from deltamic_core.fit import FitConfig
    from deltamic_core.geometry import cell_surface
    from deltamic_core.pipeline.objects import _cells_image, _fixed_neighbours, plan_object_crops
    from deltamic_core.psf import GaussianPSF

    centres = [(5.0, 5.0, 9.5), (5.0, 5.0, 5.0), (5.0, 9.5, 9.5), (5.0, 5.0, 14.0)]
    gains = [0.7, 1.3, 2.1]
    seeds = seed_spheres(centres, 2.0, 4)
    psf, config = GaussianPSF(FIELD_SIGMA), FitConfig()
    crop = plan_object_crops(seeds, (20, 40, 100), FIELD_SP, psf_reach_um=(1.8, 0.75, 0.75), neighbours=False)[0]
    assert sorted(crop.near) == [2, 3, 4]  # the three neighbours reach the object's crop
    surf = [cell_surface(seeds, c) for c in (1, 2, 3, 4)]
    built = []
    real = render.Renderer

    def counting(*a, **k):
        built.append(1)
        return real(*a, **k)

    monkeypatch.setattr(render, "Renderer", counting)
    data = np.zeros(crop.shape, np.float32)
    got = _fixed_neighbours(data, crop, surf[0], list(zip(surf[1:], gains)), FIELD_SP, psf, config)
    assert len(built) == 1
    monkeypatch.setattr(render, "Renderer", real)
    one_by_one = sum(g * _cells_image([s], crop, FIELD_SP, psf, config) for s, g in zip(surf[1:], gains))
    np.testing.assert_allclose(got, one_by_one, rtol=0, atol=1e-5 * np.abs(one_by_one).max())
    axes = [(np.arange(n * 3) - 1) / 3 * s for n, s in zip((20, 40, 100), FIELD_SP)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    fill = sum(
        g * (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= 4.0) for c, g in zip(centres[1:], gains)
    )
    fill = fill.reshape(20, 3, 40, 3, 100, 3).mean(axis=(1, 3, 5))
    ref = ndimage.gaussian_filter(fill, [s / d for s, d in zip(FIELD_SIGMA, FIELD_SP)], mode="constant")[crop.slices]
    assert np.abs(got - ref).max() < 0.06 * max(gains)
    assert abs(got.sum() / ref.sum() - 1) < 0.01


@pytest.mark.slow
def test_second_pass_gives_the_contacts_back_to_the_objects_fitted_later():
    """Three filled spheres in a row, touching (flat contacts: each voxel to the nearest power
    centre), the middle one smaller, seeds with too small radii: fitted once, the first object
    takes the middle one's light (+5.2% on the middle one); the second pass, with every
    neighbour's fitted light held fixed, brings every volume within 4.5% of the fill's."""
    from deltamic_core.geometry import cell_surface, measure
    from deltamic_core.pipeline import FitJob, InitSpec, PSFSpec, run

    shape, ss = (20, 40, 64), 3
    centres, radii = [(5.0, 5.0, 5.0), (5.0, 5.0, 8.8), (5.0, 5.0, 12.4)], [2.3, 1.9, 2.2]
    axes = [(np.arange(n * ss) - (ss - 1) / 2) / ss * s for n, s in zip(shape, FIELD_SP)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    power = np.stack([((pts - c) ** 2).sum(-1) - r * r for c, r in zip(centres, radii)])
    lab = np.where(power.min(0) <= 0, power.argmin(0) + 1, 0)
    truth = [(lab == k + 1).sum() * np.prod(FIELD_SP) / ss**3 for k in range(3)]
    fill = (lab > 0).astype(np.float32).reshape(shape[0], ss, shape[1], ss, shape[2], ss).mean(axis=(1, 3, 5))
    img = ndimage.gaussian_filter(fill, [s / d for s, d in zip(FIELD_SIGMA, FIELD_SP)], mode="constant")
    img = np.random.default_rng(4).poisson(200 * img + 10).astype(np.float32)
    seeds = np.array([[5.2, 5.3, 5.2], [4.9, 4.8, 8.6], [5.0, 5.1, 12.6]])
    out = run(
        FitJob(
            image_data=img,
            **_interior_job(PSFSpec),
            init=InitSpec("seeds", data=(seeds, np.array([1.5, 1.2, 1.5]))),
            per_object=True,
        )
    )
    m = out.result.mesh
    got = np.array([float(measure(cell_surface(m, k + 1))["volume_um3"][0]) for k in range(3)])
    assert np.abs(got / np.asarray(truth) - 1).max() < 0.045
    assert all("pass2_shape" in c for c in out.timings["crops"])


def _touching_pair(shape=(20, 40, 64), ss=3):
    """Two filled spheres of one brightness (radius 2.2 um, centres 3.6 um apart) cut by their
    power plane (a flat contact, no edge between them in the image): image, true volumes."""
    centres, radii = [(5.0, 5.0, 6.0), (5.0, 5.0, 9.6)], [2.2, 2.2]
    axes = [(np.arange(n * ss) - (ss - 1) / 2) / ss * s for n, s in zip(shape, FIELD_SP)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    power = np.stack([((pts - c) ** 2).sum(-1) - r * r for c, r in zip(centres, radii)])
    lab = np.where(power.min(0) <= 0, power.argmin(0) + 1, 0)
    truth = np.array([(lab == k + 1).sum() * np.prod(FIELD_SP) / ss**3 for k in range(2)])
    fill = (lab > 0).astype(np.float32).reshape(shape[0], ss, shape[1], ss, shape[2], ss).mean(axis=(1, 3, 5))
    img = ndimage.gaussian_filter(fill, [s / d for s, d in zip(FIELD_SIGMA, FIELD_SP)], mode="constant")
    return np.random.default_rng(4).poisson(200 * img + 10).astype(np.float32), truth


def test_watershed_split_follows_the_neck_from_markers_off_the_maximum():
    """The contact prior divides the foreground of two touching equal spheres at their neck
    (each half within 5% of the other and on its own side of the contact plane x = 7.8 um),
    also from seeds off the spheres' centres (a marker below the neck must not let the other
    flood take its object: it climbs the distance map first)."""
    from deltamic_core.geometry import measure
    from deltamic_core.pipeline.objects import split_initial_mesh, watershed_split

    img, _ = _touching_pair()
    seeds = seed_spheres([[5.2, 5.3, 5.6], [4.9, 4.8, 10.0]], 1.5, 3)
    lab = watershed_split(img, FIELD_SP, seeds)
    v = np.array([(lab == k).sum() for k in (1, 2)], float)
    assert abs(v[0] / v[1] - 1) < 0.05  # the plane falls between voxel columns 31 and 32
    x = np.arange(lab.shape[2]) * FIELD_SP[2]
    assert x[np.nonzero((lab == 1).any(axis=(0, 1)))[0].max()] < 7.8 + FIELD_SP[2]
    assert x[np.nonzero((lab == 2).any(axis=(0, 1)))[0].min()] > 7.8 - FIELD_SP[2]
    split = measure(split_initial_mesh(img, FIELD_SP, seeds))
    assert list(split["cell"]) == [1, 2]
    assert np.allclose(split["volume_um3"], v * np.prod(FIELD_SP), rtol=0.02)


@pytest.mark.slow
def test_touching_objects_of_one_brightness_share_their_light_at_the_neck():
    """Two touching filled spheres of one brightness (no edge at the contact), seeds off
    centre and too small: with the watershed contact prior both volumes come out within 2% of
    the truth (without it, contacts="none": +4.0% / -3.8%, the object fitted first takes the
    shared light)."""
    from deltamic_core.geometry import cell_surface, measure
    from deltamic_core.pipeline import FitJob, InitSpec, PSFSpec, run

    img, truth = _touching_pair()
    out = run(
        FitJob(
            image_data=img,
            **_interior_job(PSFSpec),
            init=InitSpec("seeds", data=(np.array([[5.2, 5.3, 5.6], [4.9, 4.8, 10.0]]), np.array([1.5, 1.5]))),
            per_object=True,
        )
    )
    m = out.result.mesh
    got = np.array([float(measure(cell_surface(m, k + 1))["volume_um3"][0]) for k in range(2)])
    assert np.abs(got / truth - 1).max() < 0.02


def test_isolated_objects_keep_their_seed_surfaces():
    """The contact prior only replaces cells whose regions meet: two separate spheres keep
    their seed surfaces (vertex for vertex), a touching pair beside them does not."""
    from deltamic_core.pipeline.objects import split_initial_mesh

    img, _ = _touching_pair(shape=(20, 40, 100))
    far = _field([(5.0, 5.0, 20.0)], shape=(20, 40, 100)) - 10.0
    seeds = seed_spheres([[5.2, 5.3, 5.6], [4.9, 4.8, 10.0], [5.0, 5.0, 20.0]], 1.5, 3)
    out = split_initial_mesh(img + far, FIELD_SP, seeds)
    assert list(out.cell_ids) == [1, 2, 3]
    assert np.array_equal(
        np.sort(out.verts[np.unique(out.faces[(out.labels == 3).any(1)])], axis=0),
        np.sort(seeds.verts[np.unique(seeds.faces[(seeds.labels == 3).any(1)])], axis=0),
    )
    v1 = out.verts[np.unique(out.faces[(out.labels == 1).any(1)])]
    assert v1[:, 2].max() > 7.5  # cell 1 now reaches its neck, not its 1.5 um seed sphere


def test_per_object_crops_solve_a_constant_gain_and_background(monkeypatch):
    """The neighbours' fixed light is rendered with one gain per object, so every crop's fit
    solves a constant gain and background even when the config asks for a gain linear in depth
    (in a crop of a few um that gain traded the objects' z extent for brightness)."""
    import deltamic_core.fit as fit_mod
    from deltamic_core.fit import FitConfig
    from deltamic_core.pipeline.objects import fit_objects
    from deltamic_core.psf import GaussianPSF

    seen = []

    class Stop(Exception):
        pass

    class Recorder:
        def __init__(self, data, spacing_um, mesh, psf, config, **kw):
            seen.append(config.photometric_field)
            raise Stop

    monkeypatch.setattr(fit_mod, "Fitter", Recorder)
    img = _field([(5.0, 5.0, 6.0), (5.0, 5.0, 20.0)])
    seeds = seed_spheres([(5.0, 5.0, 6.0), (5.0, 5.0, 20.0)], 1.8, 2)
    cfg = FitConfig(membrane_weight=0.0, volume_weight=1.0, photometric_field="linear")
    with pytest.raises(Stop):
        fit_objects(img, FIELD_SP, seeds, GaussianPSF(sigma_um=FIELD_SIGMA), cfg, contacts="none")
    assert seen == ["constant"]
