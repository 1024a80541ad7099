"""scripts/make_figure.py, the README's workflow figure, run as the README says on a reduced
setting (2 iterations, one level) in a shown viewer under Xvfb: in the state of each panel
(seeded, fitting, fitted, one cell refitted) the fit's Surface layer changes at least 2% of the
canvas pixels inside its projected bounding box (shown against hidden), the Cells section
refitted the cell the canvas click picked, and the file written is a PNG of four panels side by
side, found from its pixels. The committed docs/figure_workflow.png has the same layout and
stays small."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gui_helpers import MIN_CHANGED, surface_contrast

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_figure.py"
COMMITTED = ROOT / "docs" / "figure_workflow.png"
MAX_BYTES = 400_000
MIN_PANEL_PX = 40  # a panel is larger than this; a line of text is not


def _script():
    spec = importlib.util.spec_from_file_location("make_figure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs(mask) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def panel_grid(path) -> tuple[list, list, np.ndarray]:
    """(row runs, column runs, RGB pixels) of a figure on white: a row or column belongs to a
    panel where more than half its pixels are not white, in runs of at least MIN_PANEL_PX (the
    gutters between panels are white, titles thin lines of text)."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    ink = np.any(rgb < 245, axis=-1)
    rows, cols = ([(a, b) for a, b in _runs(ink.mean(axis=axis) > 0.5) if b - a >= MIN_PANEL_PX] for axis in (1, 0))
    return rows, cols, rgb


def check_layout(path, layout, panel_width=None) -> None:
    rows, cols, rgb = panel_grid(path)
    assert (len(rows), len(cols)) == tuple(layout), (rows, cols)
    widths = [c1 - c0 for c0, c1 in cols]
    heights = [r1 - r0 for r0, r1 in rows]
    assert max(widths) - min(widths) <= 2 and max(heights) - min(heights) <= 2, (widths, heights)
    if panel_width is not None:
        assert all(abs(w - panel_width) <= 2 for w in widths), widths
    for r0, r1 in rows:
        for c0, c1 in cols:
            block = rgb[r0:r1, c0:c1].astype(float)
            assert block.std() > 10.0, (r0, c0)  # a picture, not a flat fill
            assert (block.max(axis=-1) > 60).mean() > 0.2, (r0, c0)  # not black: something drawn


@pytest.mark.gui
@pytest.mark.slow
def test_make_figure_draws_each_state_and_writes_the_panels(
    make_napari_viewer, gui_plugin_thread_guard, sample_cache, gui_errors, qtbot, tmp_path
):
    pytest.importorskip("napari")
    make_figure = _script()
    viewer = make_napari_viewer(show=True)
    seen = {}

    def on_panel(name, viewer, layer):
        from napari_deltamic._layers import layer_to_mesh

        seen[name] = surface_contrast(viewer, layer, qtbot, tmp_path, name)
        seen[f"{name} mesh"] = layer_to_mesh(layer)
        if name == "d":
            seen["picked"] = np.unique(viewer.layers["picked cell"].vertex_values)

    out = tmp_path / "figure.png"
    argv = ["--iterations", "2", "--levels", "1", "--panel-width", "200", "--out", str(out), "--timeout", "300"]
    assert make_figure.main(argv, viewer=viewer, on_panel=on_panel) == 0
    assert gui_errors == []
    for name in make_figure.PANELS:
        r = seen[name]
        assert r["fraction_in_box"] >= MIN_CHANGED, (name, r)
        assert r["share_inside"] >= 0.95, (name, r)  # the changes are where the mesh is
    # between (c) and (d) only the cell the click picked (shown alone on the highlight layer) moved
    from deltamic_core.geometry import cell_surface

    assert len(seen["picked"]) == 1
    cell = int(seen["picked"][0])
    fitted, refitted = seen["c mesh"], seen["d mesh"]
    own = np.unique(cell_surface(fitted, cell, compact=False).faces)
    others = np.setdiff1d(np.arange(len(fitted.verts)), own)
    np.testing.assert_array_equal(refitted.faces, fitted.faces)
    np.testing.assert_allclose(refitted.verts[others], fitted.verts[others], rtol=0, atol=1e-6)  # float32 layer
    assert np.abs(refitted.verts[own] - fitted.verts[own]).max() > 1e-3
    check_layout(out, make_figure.LAYOUT, panel_width=200)


def test_committed_figure_is_small_and_has_the_panel_layout():
    make_figure = _script()
    assert COMMITTED.stat().st_size < MAX_BYTES
    check_layout(COMMITTED, make_figure.LAYOUT)
