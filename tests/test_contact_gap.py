"""The shared-membrane rebuild decides contacts by the gap between the cells' surfaces
(FitConfig.merge_gap_um, geometry.contact_labels_by_gap), checked against analytic contacts."""

import numpy as np
import pytest

from deltamic_core.fit import FitConfig, Fitter
from deltamic_core.geometry import contact_labels_by_gap, contacts, icosphere, label_image, merge_meshes
from deltamic_core.mesh import Mesh
from deltamic_core.psf import GaussianPSF

R = 3.0
SPACING = (0.5, 0.25, 0.25)
SHAPE = (20, 40, 60)


def _rebuilt_contact(mesh, gap_um):
    """Shared area (um^2) of the fitter's rebuild of two separate cells (0 if none)."""
    img = np.random.default_rng(0).random(SHAPE)
    config = FitConfig(levels=(1,), iterations=1, merge_gap_um=gap_um)
    out = Fitter(img, SPACING, mesh, GaussianPSF(sigma_um=0.3), config)._share_membranes(mesh)
    return 0.0 if out is None else float(contacts(out)["area_um2"].sum())


def _half_ball(centre, cut, keep_below):
    """A ball of radius R whose part beyond the plane x = cut is pressed onto that plane."""
    m = icosphere(tuple(centre), R, 5)
    v = m.verts.copy()
    v[:, 2] = np.minimum(v[:, 2], cut) if keep_below else np.maximum(v[:, 2], cut)
    return Mesh(v, m.faces)


@pytest.mark.parametrize("offset, gap", [(0.0, 0.06), (0.13, 0.06), (0.07, 0.03)])
def test_a_near_touching_double_sheet_becomes_its_contact_disc(offset, gap):
    # two half balls (centres 1 um apart along x) whose flat faces are `gap` apart: the contact
    # is the flat disc of radius sqrt(R^2 - (0.5 - gap / 2)^2)
    c = 7.5 + offset
    a = _half_ball((5.0 + offset, 5.0 + offset, c - 0.5), c - gap / 2, True)
    b = _half_ball((5.0 + offset, 5.0 + offset, c + 0.5), c + gap / 2, False)
    mesh = merge_meshes([a, b])
    disc = np.pi * (R**2 - (0.5 - gap / 2) ** 2)
    assert _rebuilt_contact(mesh, 0.1) == pytest.approx(disc, rel=0.03)
    if offset == 0.0:  # a voxel centre in the gap: voxel adjacency alone leaves two sheets
        assert _rebuilt_contact(mesh, 0.0) == 0.0


def test_the_shared_sheet_stops_where_overlapping_surfaces_part():
    # two spheres overlapping by 1 um: where the surfaces are within g (their signed distances
    # add up to <= g) is the disc of radius sqrt((R + g/2)^2 - D^2/4); voxel adjacency zips
    # them further out, into the wedge, by an amount that depends on where the voxels fall
    d, g = 5.0, 0.02
    disc = np.pi * ((R + g / 2) ** 2 - d * d / 4)
    errs_gap, errs_vox = [], []
    for off in (0.0, 0.11):
        c1 = np.array([5.0 + off, 5.0, 7.5 - d / 2 + off])
        mesh = merge_meshes([icosphere(tuple(c1), R, 5), icosphere(tuple(c1 + [0, 0, d]), R, 5)])
        errs_gap.append(_rebuilt_contact(mesh, g) / disc - 1)
        errs_vox.append(_rebuilt_contact(mesh, 0.0) / disc - 1)
    assert max(abs(e) for e in errs_gap) < 0.15
    assert max(abs(e) for e in errs_vox) > 0.2  # what the rule fixes


def test_contact_labels_by_gap_fills_thin_gaps_and_parts_distant_neighbours():
    # two boxes 0.1 um apart along x (a voxel centre in the gap), one box 0.6 um further
    # (voxels adjacent after rasterisation of a 0.5 um grid, surfaces apart)
    import trimesh

    def box(lo, hi):
        t = trimesh.creation.box(bounds=np.array([lo, hi])).subdivide()
        return Mesh(np.asarray(t.vertices, float), np.asarray(t.faces, np.int64))

    spacing = (0.5, 0.5, 0.5)
    mesh = merge_meshes([box((1.1, 1.1, 1.1), (3.9, 3.9, 3.95)), box((1.1, 1.1, 4.05), (3.9, 3.9, 6.1))])
    lab = label_image(mesh, (10, 10, 16), spacing)
    assert not (lab[:, :, 8] > 0).any()  # x = 4.0 um: the gap
    out = contact_labels_by_gap(lab, mesh, spacing, (0, 0, 0), 0.15)
    inner = lab[:, :, 7] > 0
    np.testing.assert_array_equal(out[:, :, 8] > 0, inner)  # the gap column joins a cell
    assert set(np.unique(out[:, :, 8])) <= {0, 1}  # the nearer one (x = 3.95 is 0.05 away)
    np.testing.assert_array_equal(contact_labels_by_gap(lab, mesh, spacing, (0, 0, 0), 0.05), lab)
    np.testing.assert_array_equal(contact_labels_by_gap(lab, mesh, spacing, (0, 0, 0), 0.0), lab)
    # surfaces 0.35 um apart whose voxels touch (faces at x = 3.6 and 3.95, voxel centres 3.5
    # and 4.0): not a contact, both facing columns become background (snapped back later)
    far = merge_meshes([box((1.1, 1.1, 1.1), (3.9, 3.9, 3.6)), box((1.1, 1.1, 3.95), (3.9, 3.9, 6.1))])
    lab2 = label_image(far, (10, 10, 16), spacing)
    assert ((lab2[:, :, :-1] == 1) & (lab2[:, :, 1:] == 2)).sum() > 0
    out2 = contact_labels_by_gap(lab2, far, spacing, (0, 0, 0), 0.15)
    assert ((out2[:, :, :-1] == 1) & (out2[:, :, 1:] == 2)).sum() == 0
    changed = np.argwhere(out2 != lab2)
    assert set(changed[:, 2].tolist()) == {7, 8} and (out2[out2 != lab2] == 0).all()
    # within the tolerance they stay a contact
    np.testing.assert_array_equal(contact_labels_by_gap(lab2, far, spacing, (0, 0, 0), 0.4), lab2)


def test_the_full_resolution_level_rebuilds_its_contacts_half_way():
    # two separate half balls 0.06 um apart: the only level is full resolution, so the one
    # rebuild is reshare_final_at's, after half of its 4 iterations (steps too small to matter)
    c = 7.5
    mesh = merge_meshes(
        [_half_ball((5.0, 5.0, c - 0.5), c - 0.03, True), _half_ball((5.0, 5.0, c + 0.5), c + 0.03, False)]
    )
    disc = np.pi * (R**2 - 0.47**2)
    img = np.random.default_rng(0).random(SHAPE)

    def run(at):
        config = FitConfig(levels=(1,), iterations=4, lr=1e-4, reshare_final_at=at)
        fitter = Fitter(img, SPACING, mesh, GaussianPSF(sigma_um=0.3), config)
        steps = [fitter.step() for _ in range(4)]
        area = contacts(fitter.current_mesh())["area_um2"].sum()
        return [s.remeshed for s in steps], float(area)

    remeshed, area = run(0.5)
    assert remeshed == [False, True, False, False]
    assert area == pytest.approx(disc, rel=0.03)
    assert run(0.0) == ([False] * 4, 0.0)
    with pytest.raises(ValueError, match="reshare_final_at"):
        FitConfig(reshare_final_at=1.5)


def test_the_rebuild_rasterises_on_voxels_of_half_the_edge(monkeypatch):
    # two half balls of radius 5 um pressed onto planes 0.06 um apart, image voxels of 0.2 um,
    # edge 1 um: the rebuild's label image has 0.5 um voxels (rebuild_voxel 0.5), so the
    # remesher gets a sixth of the surface nets faces, and the rebuilt mesh (snapped back
    # onto the cells) is as good as from the image grid: the contact disc, the volumes
    import deltamic_core.geometry.seed as seed
    from deltamic_core.fit.fitter import rebuild_grid
    from deltamic_core.geometry import measure

    r, gap, c = 5.0, 0.06, 6.6

    def half(centre, keep_below):
        m = icosphere(tuple(centre), r, 4)
        v = m.verts.copy()
        cut = c - gap / 2 if keep_below else c + gap / 2
        v[:, 2] = np.minimum(v[:, 2], cut) if keep_below else np.maximum(v[:, 2], cut)
        return Mesh(v, m.faces)

    mesh = merge_meshes([half((5.9, 6.0, c - 0.5), True), half((5.9, 6.0, c + 0.5), False)])
    disc = np.pi * (r**2 - (0.5 - gap / 2) ** 2)
    shape, spacing = (60, 61, 66), (0.2, 0.2, 0.2)
    img = np.random.default_rng(0).random(shape)
    nets_faces = []
    real = seed.surface_nets
    monkeypatch.setattr(seed, "surface_nets", lambda *a, **k: nets_faces.append(len((m := real(*a, **k)).faces)) or m)
    truth = measure(mesh)["volume_um3"]
    for voxel in (0.0, 0.5):
        config = FitConfig(levels=(1,), iterations=1, target_edge_um=1.0, rebuild_voxel=voxel)
        out = Fitter(img, spacing, mesh, GaussianPSF(sigma_um=0.3), config)._share_membranes(mesh, "always")
        assert float(contacts(out)["area_um2"].sum()) == pytest.approx(disc, rel=0.04)
        np.testing.assert_allclose(measure(out)["volume_um3"], truth, rtol=0.02)
    assert nets_faces[1] < nets_faces[0] / 4
    # the grid: max(image voxel, 0.5 um) per axis, from the same origin, covering the image
    assert rebuild_grid(shape, spacing, 0.5) == ((0.5, 0.5, 0.5), (25, 25, 27))
    assert rebuild_grid(shape, (0.6, 0.2, 0.2), 0.5) == ((0.6, 0.5, 0.5), (60, 25, 27))
    assert rebuild_grid(shape, spacing, 0.0) == (spacing, shape)


def _pressed_half_balls(axis, gap, c):
    """Two balls of radius R, centres 1 um apart across ``axis``, flattened onto the planes
    ``c -+ gap / 2``: the mesh and the area of their (flat, facing) contact disc."""

    def half(centre, keep_below):
        m = icosphere(tuple(centre), R, 4)
        v = m.verts.copy()
        cut = c - gap / 2 if keep_below else c + gap / 2
        v[:, axis] = np.minimum(v[:, axis], cut) if keep_below else np.maximum(v[:, axis], cut)
        return Mesh(v, m.faces)

    lo, hi = np.array([5.2, 5.1, 5.3]), np.array([5.2, 5.1, 5.3])
    lo[axis], hi[axis] = c - 0.5, c + 0.5
    return merge_meshes([half(lo, True), half(hi, False)]), np.pi * (R**2 - (0.5 - gap / 2) ** 2)


@pytest.mark.parametrize("axis", [0, 2])
def test_the_merge_gap_grows_with_the_psf_along_its_axis(axis):
    # two half balls pressed onto planes 0.2 um apart, across z (axis 0) or across x (axis 2);
    # PSF sigma 0.26 um along z, 0.1 um laterally, merge_gap_um 0.1: "psf" zips the pair
    # across z (0.2 um < 0.1 x 2.6) into the contact disc, not across x; "isotropic" neither
    gap, c = 0.2, 5.1

    mesh, disc = _pressed_half_balls(axis, gap, c)
    img = np.random.default_rng(0).random((22, 42, 42))
    psf = GaussianPSF(sigma_um=(0.26, 0.1, 0.1))
    area = {}
    for axes in ("psf", "isotropic"):
        config = FitConfig(levels=(1,), iterations=1, target_edge_um=0.6, merge_gap_um=0.1, merge_gap_axes=axes)
        out = Fitter(img, SPACING, mesh, psf, config)._share_membranes(mesh)
        area[axes] = 0.0 if out is None else float(contacts(out)["area_um2"].sum())
    assert area["isotropic"] == 0.0
    if axis == 0:
        assert area["psf"] == pytest.approx(disc, rel=0.05)
    else:
        assert area["psf"] == 0.0
    with pytest.raises(ValueError, match="merge_gap_axes"):
        FitConfig(merge_gap_axes="z")


@pytest.mark.parametrize("axis", [0, 2])
def test_sheets_closer_than_two_psf_sigmas_along_their_normal_are_zipped(axis):
    # two half balls pressed onto planes 0.4 um apart, across z (axis 0) or across x (axis 2);
    # PSF sigma 0.26 um along z, 0.1 um laterally: zip_gap_sigmas 2 zips the pair across z
    # (0.4 um < 2 x 0.26) into its contact disc (the flat faces), not across x (0.4 > 2 x 0.1);
    # merge_gap_um alone (0.1 um) neither; at a later rebuild (the first one's surfaces are the
    # blurred first level's)
    gap, c = 0.4, 5.1

    mesh, disc = _pressed_half_balls(axis, gap, c)
    img = np.random.default_rng(0).random((22, 42, 42))
    psf = GaussianPSF(sigma_um=(0.26, 0.1, 0.1))
    area = {}
    for k in (0.0, 2.0):
        config = FitConfig(levels=(1,), iterations=1, target_edge_um=0.6, zip_gap_sigmas=k)
        out = Fitter(img, SPACING, mesh, psf, config)._share_membranes(mesh, "always")  # a later rebuild
        area[k] = 0.0 if out is None else float(contacts(out)["area_um2"].sum())
    assert area[0.0] == 0.0
    if axis == 0:
        assert area[2.0] == pytest.approx(disc, rel=0.05)
    else:
        assert area[2.0] == 0.0
    with pytest.raises(ValueError, match="zip_gap_sigmas"):
        FitConfig(zip_gap_sigmas=-1.0)


def test_zip_new_contacts_takes_only_the_pairs_that_did_not_touch():
    # cells 1 | 2 touch in both images (2's rim one voxel wider in `zipped`); 1 and 3 are a
    # voxel apart in `lab` and touch in `zipped`: only the 1-3 contact is taken
    from deltamic_core.geometry import touching_pairs, zip_new_contacts

    lab = np.zeros((8, 8, 20), np.int32)
    lab[1:7, 1:7, 1:6] = 1
    lab[2:6, 2:6, 6:10] = 2
    lab[1:7, 1:7, 15:19] = 3
    lab[1:7, 1:7, 11:14] = 1  # a second part of cell 1, a voxel from 3 (x = 14 empty)
    zipped = lab.copy()
    zipped[1:7, 1:7, 14] = 3  # the gap closed
    zipped[1:7, 2, 6:8] = 2  # a wider 1-2 rim (near their interface)
    assert touching_pairs(lab) == {(1, 2)}
    assert touching_pairs(zipped) == {(1, 2), (1, 3)}
    out = zip_new_contacts(lab, zipped)
    assert touching_pairs(out) == {(1, 2), (1, 3)}
    np.testing.assert_array_equal(out[..., :11], lab[..., :11])  # the 1-2 contact as in lab
    np.testing.assert_array_equal(out[..., 11:], zipped[..., 11:])
    np.testing.assert_array_equal(zip_new_contacts(lab, lab), lab)
    # named pairs (a contact zipped at an earlier rebuild keeps the wide rule): 1-2 taken too
    both = zip_new_contacts(lab, zipped, pairs={(1, 2), (1, 3)})
    np.testing.assert_array_equal(both, zipped)
    np.testing.assert_array_equal(zip_new_contacts(lab, zipped, pairs={(2, 3)}), lab)  # not touching
