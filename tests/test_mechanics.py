"""deltamic_core.geometry.mechanics: curvatures, contact angles, tensions, pressures.

Truth is analytic: spheres (H = 1/R, K = 1/R^2, Laplace 2 gamma / R) and exact equilibrium
doublets built by tests/analytic_doublet.py from chosen tensions (three spherical caps meeting
on a circle at the Young-Dupre angles; nothing shared with deltamic_core's geometry code).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from analytic_doublet import doublet, doublet_from_tensions, young_dupre_angles
from deltamic_core.geometry import face_areas, icosphere, measure, orient_outward, remesh
from deltamic_core.geometry.mechanics import (
    CURVATURE_COLUMNS,
    INTERFACE_COLUMNS,
    interface_curvature,
    mechanics,
)
from deltamic_core.io import read_mesh
from deltamic_core.mesh import Mesh

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec"
RHO = 5.0


def _row(result, a, b):
    i = np.flatnonzero((result.interfaces["cell_a"] == a) & (result.interfaces["cell_b"] == b))
    assert len(i) == 1, (a, b)
    return {k: result.interfaces[k][i[0]] for k in INTERFACE_COLUMNS}


def _angles(result):
    """Mean contact angle (degrees) of regions 0, 1, 2 on the doublet's one triple line."""
    j = result.junctions
    assert len(j["region_1"]) == 1
    got = {int(j[f"region_{k}"][0]): float(j[f"angle_{k}_deg"][0]) for k in (1, 2, 3)}
    return np.array([got[0], got[1], got[2]])


# ---------------------------------------------------------------------------------- spheres


def test_sphere_curvature_converges_to_one_over_r():
    radius = 3.0
    errors_h, errors_k = [], []
    for sub in (2, 3, 4):
        m = icosphere((1.0, -2.0, 0.5), radius, sub)
        h, k, boundary, _ = interface_curvature(m.verts, m.faces)
        assert not boundary.any()
        errors_h.append(np.abs(h - 1 / radius).max() * radius)
        errors_k.append(np.abs(k - 1 / radius**2).max() * radius**2)
    assert errors_h[-1] < 1e-4 and errors_k[-1] < 3e-3
    # second order in the edge length: each subdivision halves h, errors drop ~4x
    assert all(b < a / 3 for a, b in zip(errors_h, errors_h[1:])), errors_h
    assert all(b < a / 3 for a, b in zip(errors_k, errors_k[1:])), errors_k


def test_sphere_curvature_on_irregular_triangulations():
    rng = np.random.default_rng(3)
    p = rng.normal(size=(3000, 3))
    p = 2.0 * p / np.linalg.norm(p, axis=1, keepdims=True)
    mesh = orient_outward(Mesh(p, ConvexHull(p).simplices))
    h, k, _, _ = interface_curvature(mesh.verts, mesh.faces)
    # random points give very thin triangles, where the cotangent formula is noisy per vertex
    # (a known limitation of the operator); its area average and its median stay right
    area = face_areas(mesh.verts, mesh.faces).sum()
    assert abs(np.median(h) - 0.5) < 0.005 and abs(np.median(k) - 0.25) < 0.01
    assert abs(np.sum(k * _voronoi(mesh)) - 4 * math.pi) < 1e-6 * area  # Gauss-Bonnet
    # an isotropic remesh of it (what fitted meshes look like), on the sphere: accurate per vertex
    iso = remesh(mesh, 0.15)
    v = 2.0 * iso.verts / np.linalg.norm(iso.verts, axis=1, keepdims=True)
    h, k, _, _ = interface_curvature(v, iso.faces)
    assert np.percentile(np.abs(h - 0.5), 90) < 1e-3 and np.percentile(np.abs(k - 0.25), 90) < 2e-3


def _voronoi(mesh):
    import gpytoolbox

    return gpytoolbox.massmatrix(mesh.verts, mesh.faces.astype(np.int32), type="voronoi").diagonal()


def test_sphere_pressure_from_a_known_tension():
    radius, gamma = 4.0, 2.5
    m = icosphere((0.0, 0.0, 0.0), radius, 4)
    plain = mechanics(m)
    assert np.isnan(plain.interfaces["tension"][0])  # no triple line: no force balance
    assert np.allclose(plain.vertex_mean_curvature, 1 / radius, rtol=1e-3)
    r = mechanics(m, known_tensions={(0, 1): gamma})
    row = _row(r, 0, 1)
    assert row["tension"] == gamma
    assert row["delta_p"] == pytest.approx(2 * gamma / radius, rel=1e-3)
    p = dict(zip(r.cells["cell"].tolist(), r.cells["pressure"].tolist()))
    assert p[0] == pytest.approx(0.0, abs=1e-12) and p[1] == pytest.approx(2 * gamma / radius, rel=1e-3)


# ---------------------------------------------------------------------------------- doublets


def test_analytic_doublet_is_a_closed_exact_geometry():
    # the test geometry itself: cell volumes are those of the spherical caps
    psi1, psi12, psi2 = math.radians(120), math.radians(20), math.radians(-110)
    v, f, lab, info = doublet(psi1, psi12, psi2, rho=RHO, n_ring=96)
    vol = dict(zip(measure(Mesh(v, f, lab))["cell"].tolist(), measure(Mesh(v, f, lab))["volume_um3"].tolist()))

    def cap_volume(psi):  # signed volume between the plane z = 0 and the cap, on the z > 0 side
        if psi == 0:
            return 0.0
        r = RHO / abs(math.sin(psi))
        hgt = r * (1 - math.cos(abs(psi)))
        return math.copysign(math.pi * hgt * hgt * (3 * r - hgt) / 3, psi)

    assert vol[1] == pytest.approx(cap_volume(psi1) - cap_volume(psi12), rel=2e-3)
    assert vol[2] == pytest.approx(cap_volume(psi12) - cap_volume(psi2), rel=2e-3)


def test_symmetric_doublet_equal_tensions_120_degrees():
    v, f, lab, _ = doublet_from_tensions(1.0, 1.0, 1.0, rho=RHO, n_ring=48)
    r = mechanics(Mesh(v, f, lab))
    assert np.allclose(_angles(r), 120.0, atol=0.2)
    assert np.allclose(r.interfaces["tension"], 1.0, atol=3e-3)
    assert r.residual_rms < 1e-3
    # flat contact, both caps of radius rho / sin(120 deg): p1 = p2 = 2 gamma sin(120) / rho
    expected = 2 * math.sin(math.radians(120)) / RHO
    p = dict(zip(r.cells["cell"].tolist(), r.cells["pressure"].tolist()))
    assert p[1] == pytest.approx(expected, rel=5e-3) and p[2] == pytest.approx(expected, rel=5e-3)
    assert abs(_row(r, 1, 2)["mean_curvature_per_um"]) < 1e-6
    assert np.nanmax(np.abs(r.interfaces["laplace_residual"])) < 1e-6


@pytest.mark.parametrize(
    "tensions, psi12",
    [
        ((1.0, 1.3, 0.8), 0.0),
        ((1.0, 1.0, 0.5), 0.4),
        ((0.8, 1.2, 1.5), -0.3),
        ((1.0, 1.6, 1.0), 0.2),
    ],
)
def test_doublet_with_known_tension_ratios(tensions, psi12):
    g1, g2, g12 = tensions
    v, f, lab, info = doublet_from_tensions(g1, g2, g12, psi12=psi12, rho=RHO, n_ring=48)
    r = mechanics(Mesh(v, f, lab))
    c1, c2, cm = np.degrees(young_dupre_angles(g1, g2, g12))
    assert np.allclose(_angles(r), [cm, c1, c2], atol=0.3)
    truth = np.array([g1, g2, g12]) / np.mean([g1, g2, g12])
    got = np.array([_row(r, 0, 1)["tension"], _row(r, 0, 2)["tension"], _row(r, 1, 2)["tension"]])
    assert np.allclose(got, truth, rtol=6e-3), (got, truth)
    # Laplace: each cap's curvature is sin(psi) / rho (module convention), p_b - p_a = 2 gamma H
    psi = info["psi"]
    h = {(0, 1): math.sin(psi[(0, 1)]) / RHO, (0, 2): -math.sin(psi[(0, 2)]) / RHO, (1, 2): math.sin(psi[(1, 2)]) / RHO}
    for (a, b), hh in h.items():
        assert _row(r, a, b)["mean_curvature_per_um"] == pytest.approx(hh, abs=2e-3 / RHO)
    p = dict(zip(r.cells["cell"].tolist(), r.cells["pressure"].tolist()))
    assert p[1] == pytest.approx(2 * truth[0] * h[(0, 1)], rel=1e-2)
    assert p[2] == pytest.approx(2 * truth[1] * h[(0, 2)], rel=1e-2)


def test_doublet_errors_fall_under_refinement():
    g = (1.0, 1.3, 0.8)
    c1, c2, cm = np.degrees(young_dupre_angles(*g))
    truth = np.array(g) / np.mean(g)
    angle_err, tension_err, rim_err = [], [], []
    for n_ring in (24, 48, 96):
        v, f, lab, info = doublet_from_tensions(*g, psi12=0.25, rho=RHO, n_ring=n_ring)
        r = mechanics(Mesh(v, f, lab))
        angle_err.append(np.abs(_angles(r) - [cm, c1, c2]).max())
        got = np.array([_row(r, 0, 1)["tension"], _row(r, 0, 2)["tension"], _row(r, 1, 2)["tension"]])
        tension_err.append(np.abs(got / truth - 1).max())
        # boundary (triple line) vertices of the top cap: one-sided quadric fits
        c = r.curvature
        top = (c["cell_a"] == 0) & (c["cell_b"] == 1) & c["on_junction"]
        rim_err.append(np.abs(c["mean_curvature_per_um"][top] - math.sin(info["psi"][(0, 1)]) / RHO).max())
    for errs in (angle_err, tension_err, rim_err):
        assert errs[1] < errs[0] / 2 and errs[2] < errs[1] / 2, errs


def test_fixed_normalisation_and_equivalent_windings():
    v, f, lab, _ = doublet_from_tensions(1.0, 1.3, 0.8, psi12=0.2, rho=RHO, n_ring=48)
    ref = mechanics(Mesh(v, f, lab))
    fixed = mechanics(Mesh(v, f, lab), normalise=(2, 1))
    assert _row(fixed, 1, 2)["tension"] == pytest.approx(1.0)
    assert np.allclose(fixed.interfaces["tension"], ref.interfaces["tension"] / _row(ref, 1, 2)["tension"])
    # the same geometry with half the faces stored reversed (winding and labels swapped), and
    # a few faces wound against their labels (the repair in orient_outward) gives the same result
    rng = np.random.default_rng(0)
    swap = rng.random(len(f)) < 0.5
    f2, lab2 = f.copy(), lab.copy()
    f2[swap] = f2[swap][:, [0, 2, 1]]
    lab2[swap] = lab2[swap][:, ::-1]
    bad = rng.random(len(f)) < 0.02
    f2[bad] = f2[bad][:, [0, 2, 1]]
    other = mechanics(Mesh(v, f2, lab2))
    assert np.allclose(other.interfaces["tension"], ref.interfaces["tension"], atol=1e-9)
    assert np.allclose(other.interfaces["mean_curvature_per_um"], ref.interfaces["mean_curvature_per_um"], atol=1e-9)


def test_bad_normalisation_names_the_problem():
    v, f, lab, _ = doublet_from_tensions(1.0, 1.0, 1.0, rho=RHO, n_ring=24)
    with pytest.raises(ValueError, match="no interface between regions 3 and 5"):
        mechanics(Mesh(v, f, lab), normalise=(3, 5))
    with pytest.raises(ValueError, match="must be positive"):
        mechanics(Mesh(v, f, lab), known_tensions={(0, 1): -1.0})


# ---------------------------------------------------------------------------------- real mesh


def test_embryo_mesh_tables_are_consistent():
    mesh = read_mesh(SAMPLE)
    r = mechanics(mesh)
    n_if = len(r.interfaces["cell_a"])
    assert n_if == 6  # 3 cells: 3 free surfaces, 3 contacts
    assert np.all(np.isfinite(r.interfaces["tension"])) and np.all(r.interfaces["tension"] > 0)
    assert r.interfaces["tension"].mean() == pytest.approx(1.0)
    assert np.allclose(r.points["angles_deg"].sum(axis=1), 360.0)
    assert len(r.points["vertex"]) > 30
    c = r.curvature
    assert set(CURVATURE_COLUMNS) == set(c)
    # one row per (vertex, interface): the junction vertices appear once per interface
    assert len(c["vertex"]) == sum(len(np.unique(mesh.faces[r.face_interface == p])) for p in range(n_if))
    assert np.all(np.isfinite(c["mean_curvature_per_um"]))
    # the free surfaces of these convex cells curve outwards on average
    free = r.interfaces["cell_a"] == 0
    assert np.all(r.interfaces["mean_curvature_per_um"][free] > 0)
    assert np.all(np.isfinite(r.vertex_mean_curvature)) and len(r.vertex_mean_curvature) == len(mesh.verts)


def test_mechanics_outputs_round_trip(tmp_path):
    import csv

    import trimesh

    from deltamic_core.pipeline.outputs import write_mechanics_outputs

    v, f, lab, _ = doublet_from_tensions(1.0, 1.3, 0.8, rho=RHO, n_ring=32)
    mesh = Mesh(v, f, lab)
    summary = write_mechanics_outputs(tmp_path, mesh)
    with open(tmp_path / "mechanics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["cell_a"]), int(r["cell_b"])) for r in rows] == [(0, 1), (0, 2), (1, 2)]
    assert tuple(rows[0]) == INTERFACE_COLUMNS
    assert np.mean([float(r["tension"]) for r in rows]) == pytest.approx(1.0)
    with open(tmp_path / "junctions.csv") as fh:
        j = list(csv.DictReader(fh))
    assert len(j) == 1 and sum(float(j[0][f"angle_{k}_deg"]) for k in (1, 2, 3)) == pytest.approx(360.0)
    with open(tmp_path / "curvature.csv") as fh:
        c = list(csv.DictReader(fh))
    assert len(c) == len(v) + 2 * 32  # the ring's vertices appear once per interface (3 x 32)
    # an independent PLY reader sees the curvature vertex properties, our reader the labels
    loaded = trimesh.load(tmp_path / "mesh.ply", process=False)
    props = loaded.metadata["_ply_raw"]["vertex"]["data"]
    assert np.allclose(np.asarray(props["x"]).ravel(), v[:, 0])
    res = mechanics(mesh)
    assert np.allclose(np.asarray(props["mean_curvature"]).ravel(), res.vertex_mean_curvature)
    back = read_mesh(tmp_path / "mesh.ply")
    assert np.array_equal(back.faces, f) and np.array_equal(back.labels, lab)
    assert summary["pressures"][0] == pytest.approx(0.0, abs=1e-12) and summary["pressures"][1] > 0
    with pytest.raises(ValueError, match="only be written to .ply"):
        from deltamic_core.io import write_mesh

        write_mesh(tmp_path / "x.obj", mesh, vertex_properties={"h": np.zeros(len(v))})


def test_interface_surfaces_colour_each_interface_by_its_own_values():
    from deltamic_core.geometry.mechanics import interface_surfaces

    v, f, lab, _ = doublet_from_tensions(1.0, 1.3, 0.8, rho=RHO, n_ring=32)
    mesh = Mesh(v, f, lab)
    r = mechanics(mesh)
    s = interface_surfaces(mesh, r)
    assert len(s["verts"]) == len(v) + 2 * 32 and len(s["faces"]) == len(f)
    # the same triangles (face order kept, winding possibly reversed), now on split vertices
    assert np.array_equal(np.sort(s["vertex"][s["faces"]], axis=1), np.sort(f, axis=1))
    assert np.array_equal(s["verts"], v[s["vertex"]])
    for p, (a, b) in enumerate(zip(r.interfaces["cell_a"], r.interfaces["cell_b"])):
        fv = s["faces"][s["face_interface"] == p].reshape(-1)
        assert np.all(s["cell_a"][fv] == a) and np.all(s["cell_b"][fv] == b)
        assert np.allclose(s["tension"][fv], r.interfaces["tension"][p])


@pytest.mark.gui
def test_mechanics_layer_in_a_viewer(make_napari_viewer):
    from napari_deltamic._mechanics import mechanics_layer_data

    v, f, lab, _ = doublet_from_tensions(1.0, 1.3, 0.8, rho=RHO, n_ring=24)
    mesh = Mesh(v, f, lab)
    viewer = make_napari_viewer(show=True)
    data, kwargs, kind = mechanics_layer_data(mesh, color_by="tension")
    assert kind == "surface"
    layer = viewer.add_surface(data, **kwargs)
    assert list(layer.features.columns) == [
        "interface",
        "vertex",
        "mean_curvature_per_um",
        "gaussian_curvature_per_um2",
        "tension",
    ]
    assert len(layer.features) == len(layer.vertices)
    t = layer.features.groupby("interface")["tension"].first()
    assert t["1-2"] < t["0-1"] < t["0-2"]  # tensions 0.8 < 1 < 1.3
    with pytest.raises(ValueError, match="color_by must be one of"):
        mechanics_layer_data(mesh, color_by="pressure")


def test_mechanics_command(tmp_path, capsys):
    import json

    from deltamic_core.cli import main

    out = tmp_path / "mech"
    assert main(["mechanics", str(SAMPLE), "--out", str(out), "--tension", "0", "1", "2.5"]) == 0
    stdout = capsys.readouterr().out
    assert "6 interface(s)" in stdout and "interface 0-1: tension 2.5" in stdout
    assert {p.name for p in out.iterdir()} == {
        "mechanics.csv",
        "junctions.csv",
        "curvature.csv",
        "mesh.ply",
        "report.json",
        ".deltamic-manifest.json",  # the ownership manifest of every result directory
    }
    rep = json.loads((out / "report.json").read_text())
    assert rep["mechanics"]["tensions"][0] == {"cell_a": 0, "cell_b": 1, "tension": 2.5}
    # a rerun may replace its own output; bad options: one line, exit 2, nothing written
    bad = tmp_path / "bad"
    for argv, msg in (
        (["--fix-tension", "3", "7"], "no interface between regions 3 and 7"),
        (["--tension", "0", "1", "x"], "expected two region labels and a number"),
        (["--tension", "0", "1", "-2"], "must be positive"),
    ):
        assert main(["mechanics", str(SAMPLE), "--out", str(bad)] + argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
        assert not bad.exists()
    assert main(["mechanics", str(tmp_path / "none.ply"), "--out", str(bad)]) == 2
    assert "no such file" in capsys.readouterr().err
