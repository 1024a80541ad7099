"""Make ``docs/figure_workflow.png``: seeding, fitting and a per-cell refit in napari, one figure.

Drives napari as a user does: File > Open Sample (the synthetic 3-cell embryo), Plugins >
deltaMic (``add_plugin_dock_widget``, names from the npe2 manifest), "Click to seed" and one
point per cell added to the seeds layer (what a click in add mode does), Run, then a click on a
cell of the fitted Surface in the 3D canvas (a real mouse click: the Cells section picks the
cell under it) and "Refit cell". Four canvas screenshots (3D, the Surface over the image) make
the panels: (a) the seed spheres, (b) the fit under way, (c) the fit done, (d) the picked cell
refitted alone, its neighbours frozen.

    .venv/bin/python scripts/make_figure.py [--iterations N] [--levels 2 1] [--out docs/figure_workflow.png]

Without a display (Linux), a virtual X server is started (pyvirtualdisplay/Xvfb; napari then
renders with software OpenGL: slow but real). The widget's settings are kept in a temporary
directory, so the user's remembered settings neither change the figure nor are changed by it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: the main window's size: a 1280 x 800 laptop screen
WINDOW = (1280, 800)
#: the 3D view of every panel (napari camera angles, degrees)
ANGLES = (-15.0, 35.0, 125.0)
PANELS = ("a", "b", "c", "d")
#: (rows, columns) of the composed figure
LAYOUT = (1, 4)
#: the camera's zoom relative to napari's "reset view" (the cells fill the canvas)
ZOOM = 1.1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30, help="fit iterations per resolution level")
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 1], help="resolution levels (as --levels)")
    parser.add_argument(
        "--refit-iterations", type=int, default=None, help="iterations per level of the refit (default: --iterations)"
    )
    parser.add_argument("--step", type=float, default=1.0, help="step size in voxels")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figure_workflow.png")
    parser.add_argument("--panel-width", type=int, default=320, help="width of one panel in the figure (pixels)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for a step after this many s")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (panel b shows the fit under way)")
    return args


def main(argv=None, *, viewer=None, on_panel=None) -> int:
    """Make the figure. ``viewer``: a shown napari viewer to use (a new one otherwise, closed at
    the end); ``on_panel(name, viewer, layer)`` is called in each panel's state, right after its
    screenshot, with the fit's Surface layer (the tests check the canvas there)."""
    args = parse_args(argv)
    display = None
    if viewer is None and not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(WINDOW[0] + 200, WINDOW[1] + 200), color_depth=24)
        display.start()
    saved = os.environ.get("NAPARI_DELTAMIC_CONFIG_DIR")
    try:
        with tempfile.TemporaryDirectory(prefix="deltamic-figure-settings-") as settings:
            if saved is None:
                os.environ["NAPARI_DELTAMIC_CONFIG_DIR"] = settings
            return _run(args, viewer, on_panel)
    except (TimeoutError, RuntimeError) as exc:
        print(f"make_figure: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if saved is None:
            os.environ.pop("NAPARI_DELTAMIC_CONFIG_DIR", None)
        if display is not None:
            display.stop()


class _Session:
    """The Qt event loop run by hand (the script has no ``napari.run()``)."""

    def __init__(self, timeout_s: float):
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.timeout_s = timeout_s

    def wait(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def until(self, condition, what: str) -> None:
        end = time.perf_counter() + self.timeout_s
        while not condition():
            if time.perf_counter() > end:
                raise TimeoutError(f"gave up after {self.timeout_s:.0f} s waiting for {what}")
            self.app.processEvents()
            time.sleep(0.01)


def _run(args, viewer, on_panel) -> int:
    import napari

    if viewer is not None:
        return _drive(args, viewer, on_panel)
    viewer = napari.Viewer(show=True, title="napari-deltamic")
    try:
        return _drive(args, viewer, on_panel)
    finally:
        viewer.close()  # stops a fit still running (the widget's close hook)


def _drive(args, viewer, on_panel) -> int:
    import napari
    from npe2 import PluginManifest

    qt = _Session(args.timeout)
    viewer.window.resize(*WINDOW)
    qt.wait(0.2)
    manifest = PluginManifest.from_distribution("napari-deltamic")
    viewer.open_sample(manifest.name, manifest.contributions.sample_data[0].key)
    image = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    # where the user clicks: the sample's own seed points (one near each cell's centre), in um
    sample_seeds = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Points))
    clicks = [sample_seeds.data_to_world(p) for p in np.asarray(sample_seeds.data)]
    for layer in [layer for layer in viewer.layers if layer is not image]:
        viewer.layers.remove(layer)  # the user starts from the image alone
    _, w = viewer.window.add_plugin_dock_widget(manifest.name, manifest.contributions.widgets[0].display_name)
    qt.until(w.isVisible, "the dock widget")
    w.defaults_button.click()
    w.image_combo.set_layer(image)
    w.psf_panel.set_sigma(image.metadata["sample_params"]["sigma_um"])
    w.iter_box.setValue(args.iterations)
    w.levels_edit.setText(" ".join(str(v) for v in args.levels))
    w.step_box.setValue(args.step)

    t0 = time.perf_counter()
    shots: dict[str, np.ndarray] = {}
    titles: dict[str, str] = {}

    def panel(name: str, title: tuple[str, str], layer) -> None:
        qt.wait(0.3)
        shots[name] = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
        titles[name] = title
        print(f"panel {title[0]}: {title[1]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if on_panel is not None:
            on_panel(name, viewer, layer)

    # (a) Click to seed: a seeds layer in add mode; each point added gets a sphere whose radius
    # is estimated from the image around it
    w.click_button.click()
    seeds = w.seed_combo.layer()
    for k, c in enumerate(clicks):
        seeds.add(seeds.world_to_data(c))
        qt.until(lambda k=k: f"{k + 1} seed(s)" in w.seed_status.text(), f"seed {k + 1}'s sphere")
    qt.until(lambda: _surface(viewer) is not None, "the seed spheres")
    fit = _surface(viewer)  # the fit's Surface layer: the seed spheres now, the fit later
    seeds.mode = "pan_zoom"
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.scene.camera.angles = ANGLES
    viewer.scene.camera.zoom *= ZOOM
    qt.wait(0.5)  # the canvas takes its final size once drawn
    radii = np.asarray(seeds.features["radius_um"], dtype=float)
    panel(
        "a",
        ("a  Click to seed", f"{len(clicks)} clicks, radii {radii.min():.1f}-{radii.max():.1f} um estimated"),
        fit,
    )

    # (b), (c) Run: the Surface follows the fit live
    w.run_button.click()  # the job is prepared in the fit's worker
    qt.until(lambda: w.runner.last_prepared is not None or not w.is_running, "the fit's preparation")
    if not w.is_running and "fit_iteration" not in fit.metadata:
        print("the fit did not start (see the error notification)", file=sys.stderr)
        return 1
    total = w.progress.maximum()
    mid = max(total // 3, 1)
    qt.until(lambda: fit.metadata.get("fit_iteration", 0) >= mid or not w.is_running, "the fit a third of the way")
    seeds.visible = False
    panel("b", ("b  Run", f"the fit live, iteration {fit.metadata.get('fit_iteration', 0)} of {total}"), fit)
    qt.until(lambda: not w.is_running, "the end of the fit")
    if "fit_iteration" not in fit.metadata:
        print("no fit iteration finished", file=sys.stderr)
        return 1
    mesh = w.result_mesh()
    shared = int(np.all(mesh.labels > 0, axis=1).sum()) if mesh.labels is not None else 0
    what = f", {shared} shared membrane faces" if shared else f", {mesh.n_cells} cells"
    panel("c", ("c  fitted", f"{fit.metadata['fit_iteration']} iterations{what}"), fit)

    # (d) a click on a cell of the Surface (pan/zoom mode, the fit layer selected) picks it;
    # Refit cell fits it again alone in a crop, its neighbours frozen
    if args.refit_iterations is not None:
        w.iter_box.setValue(args.refit_iterations)
    viewer.layers.selection.active = fit
    cell = _pick_a_cell(viewer, w, fit, qt)
    before = w.result_mesh().verts.copy()
    w.refit_button.click()
    qt.until(lambda: "refitted" in w.cell_status.text(), "the refit")
    moved = float(np.linalg.norm(w.result_mesh().verts - before, axis=1).max())  # the others: 0
    # the other cells dimmed in the layer controls (opacity, and blending without depth so the
    # picked cell's opaque copy is drawn whole over its translucent self)
    fit.opacity, fit.blending = 0.4, "translucent_no_depth"
    for layer in viewer.layers:  # the Labels layer the refit updated: voxel blocks in 3D, hidden
        if isinstance(layer, napari.layers.Labels):
            layer.visible = False
    panel("d", ("d  Refit cell", f"cell {cell} clicked; the refit moved it <= {moved:.2f} um"), fit)

    _write_figure(args.out, shots, titles, args.panel_width)
    print(f"wrote {args.out}", flush=True)
    return 0


def _surface(viewer):
    """The one Surface layer (the fit's), or None."""
    import napari

    return next((layer for layer in viewer.layers if isinstance(layer, napari.layers.Surface)), None)


def _canvas_widget(viewer):
    """The vispy canvas: the Qt widget of that type inside the viewer's main window."""
    from qtpy.QtWidgets import QApplication, QMainWindow, QWidget

    windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible()]
    return next(c for w in windows for c in w.findChildren(QWidget) if type(c).__name__ == "CanvasBackendDesktop")


def _pick_a_cell(viewer, widget, layer, qt) -> int:
    """Click (press and release on the canvas) where each cell's centre is in the view until
    the Cells section has picked one; the camera comes back to where it was."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    from deltamic_core.geometry import measure

    table = measure(widget.result_mesh())
    centres = np.asarray(table["centroid"], dtype=float).reshape(-1, 3)
    canvas = _canvas_widget(viewer)
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    view = viewer.scene.camera.center
    try:
        for c in centres:
            viewer.scene.camera.center = tuple(float(v) for v in c)
            qt.wait(0.1)
            QTest.mouseMove(canvas, centre)
            QTest.mouseClick(canvas, Qt.LeftButton, Qt.NoModifier, centre)
            qt.wait(0.2)
            if widget.cells.picked is not None:
                return int(widget.cells.picked)
    finally:
        viewer.scene.camera.center = view
    raise RuntimeError("no cell was picked by a click on its centre")


def _write_figure(path: Path, shots: dict, titles: dict, panel_width: int) -> None:
    """The panels cropped to one common box around what was drawn, side by side in LAYOUT,
    titled; written atomically as a palette PNG (small enough for the README)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    from deltamic_core.io import atomic_write

    # the canvas can change by a pixel between panels (the dock's progress bar): a common shape
    n_r = min(shots[p].shape[0] for p in PANELS)
    n_c = min(shots[p].shape[1] for p in PANELS)
    stack = np.stack([shots[p][:n_r, :n_c, :3] for p in PANELS])
    drawn = np.any(stack > 8, axis=(0, 3))  # the canvas background is black
    rows, cols = np.nonzero(drawn)
    pad = 8
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, drawn.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, drawn.shape[1])
    crops = [Image.fromarray(s[r0:r1, c0:c1]) for s in stack]
    height = round(panel_width * (r1 - r0) / (c1 - c0))
    crops = [c.resize((panel_width, height), Image.LANCZOS) for c in crops]

    dpi, gap_px = 100, 10
    font_pt = min(10.0, panel_width / 38.0)  # the longest line fits the panel's width
    title_px = int(2.6 * font_pt * dpi / 72) + 4
    n_rows, n_cols = LAYOUT
    fig_w = n_cols * panel_width + (n_cols + 1) * gap_px
    fig_h = n_rows * (height + title_px) + (n_rows + 1) * gap_px
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    for k, (name, crop) in enumerate(zip(PANELS, crops)):
        r, c = divmod(k, n_cols)
        left = (gap_px + c * (panel_width + gap_px)) / fig_w
        bottom = 1.0 - (gap_px + r * (height + title_px + gap_px) + title_px + height) / fig_h
        ax = fig.add_axes((left, bottom, panel_width / fig_w, height / fig_h))
        ax.imshow(np.asarray(crop), interpolation="nearest")
        ax.set_axis_off()
        label, text = titles[name]
        ax.text(0.0, 1.0 + 3 / height, text, transform=ax.transAxes, fontsize=font_pt, va="bottom", ha="left")
        ax.text(
            0.0,
            1.0 + (5 + 1.3 * font_pt * dpi / 72) / height,
            label,
            transform=ax.transAxes,
            fontsize=font_pt,
            fontweight="bold",
            va="bottom",
            ha="left",
        )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    rgb = Image.open(buf).convert("RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    picture = rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)  # no banding
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "path") as tmp:
        picture.save(tmp, format="PNG", optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
