"""Make ``docs/screenshot_widget.png``: the sample embryo fitted in the napari GUI.

Opens a (shown) napari viewer, loads the deltaMic sample data (File > Open Sample) and opens the
dock widget as the Plugins menu does (``add_plugin_dock_widget``), seeds one sphere
per cell from the sample's Points layer, runs a real fit through the widget's thread worker,
then saves the whole window (viewer + dock widget) in 3D. Also prints what the fit cost in the
GUI: time from Run to the first surface update and seconds per iteration.

Usage (headless machines get a virtual X server through pyvirtualdisplay/Xvfb):

    .venv/bin/python scripts/make_screenshot.py [--iterations 40] [--out docs/screenshot_widget.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30, help="iterations per resolution level")
    # the cells' equivalent radii are 4.1-4.8 um; a seed must reach within ~2 PSF widths of the
    # membrane for the data term to pull it (a 2.5 um seed barely grows), and the neighbouring
    # centroids are ~7 um apart, so 3.5 um seeds start close without overlapping
    parser.add_argument("--radius", type=float, default=3.5, help="seed sphere radius (um)")
    parser.add_argument(
        "--step",
        type=float,
        default=1.0,
        help="step size in voxels (the core's default 0.3 is safer but needs more iterations)",
    )
    parser.add_argument("--edge", type=float, default=1.0, help="seed triangle edge length (um)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot_widget.png")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on the fit after this many seconds")
    args = parser.parse_args(argv)

    display = None
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1100), color_depth=24)
        display.start()
    try:
        return _run(args)
    finally:
        if display is not None:
            display.stop()


def _run(args) -> int:
    import napari
    import numpy as np
    from npe2 import PluginManifest
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-deltamic")
    viewer.window.resize(1600, 1050)
    # the user's path: File > Open Sample, then Plugins > deltaMic (names from the npe2 manifest;
    # napari builds the widget and hands it a public-only proxy of the viewer)
    manifest = PluginManifest.from_distribution("napari-deltamic")
    viewer.open_sample(manifest.name, manifest.contributions.sample_data[0].key)
    image = viewer.layers["embryo (synthetic)"]
    _, widget = viewer.window.add_plugin_dock_widget(manifest.name, manifest.contributions.widgets[0].display_name)
    widget.image_combo.set_layer(image)
    widget.seed_source.setCurrentText("Points")
    widget.seed_combo.set_layer(viewer.layers["seeds"])
    widget.radius_box.setValue(args.radius)
    widget.edge_box.setValue(args.edge)
    widget.step_box.setValue(args.step)
    sample = image.metadata["sample_params"]
    widget.psf_panel.set_sigma(sample["sigma_um"])
    widget.iter_box.setValue(args.iterations)

    app = QApplication.instance()
    t0 = time.perf_counter()
    widget.run_button.click()
    if not widget.is_running:
        print("the fit did not start (see the error notification)", file=sys.stderr)
        return 1
    while widget.is_running and time.perf_counter() - t0 < args.timeout:
        app.processEvents()
        time.sleep(0.02)
    if widget.is_running:
        widget.stop_fit()  # Stop button: abandons the step in progress, keeps the last mesh
        while widget.is_running:
            app.processEvents()
            time.sleep(0.02)
        print(f"fit did not finish within {args.timeout} s; stopped it", file=sys.stderr)
    total = time.perf_counter() - t0
    steps = np.asarray(widget.step_times)
    if widget._last_step is None:
        print("no iteration finished", file=sys.stderr)
        return 1
    print(
        f"fit: {len(steps)} iterations in {total:.1f} s wall; time to first surface update "
        f"{widget.first_update_s:.2f} s; median {np.median(steps):.3f} s/iteration "
        f"(min {steps.min():.3f}, max {steps.max():.3f}); loss {widget.loss_plot.losses[0]:.4g} -> "
        f"{widget.loss_plot.losses[-1]:.4g}"
    )
    widget.measure()  # measures in a worker: wait for the table
    while not widget.measure_button.isEnabled():
        app.processEvents()
        time.sleep(0.02)

    viewer.layers["seeds"].visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 / older
    camera.angles = (-20.0, 30.0, 120.0)
    camera.zoom *= 0.8
    _close_notifications(widget.window())
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.window.screenshot(canvas_only=False, flash=False)
    _write_png_atomic(args.out, shot)
    print(f"wrote {args.out} ({shot.shape[1]} x {shot.shape[0]})")
    viewer.close()
    return 0


def _close_notifications(main_window) -> None:
    """Close notification toasts (e.g. napari's PyQt5 deprecation notice) so they stay out of the picture."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in main_window.findChildren(NapariQtNotification):
        toast.close()


def _write_png_atomic(path: Path, rgba) -> None:
    import imageio.v3 as iio

    from deltamic_core.io import atomic_write

    with atomic_write(path, "path") as tmp:
        iio.imwrite(tmp, rgba)


if __name__ == "__main__":
    raise SystemExit(main())
