"""Live napari numbers on the sample embryo with the widget's defaults (issue 12 goal 4, issue 15).

The user's path in a shown viewer: File > Open Sample (the synthetic 3-cell embryo), the widget
from the Plugins menu (``add_plugin_dock_widget``), the sample's seeds layer as the seeds
(radii estimated), every other setting at its default, Run clicked. Measured per run:

- time from the Run click to the first Surface update showing a fitted state (not the seeds);
- Surface updates per second over the measuring window, each a new fit state (the script
  fingerprints the vertices of every update and counts any re-sent unchanged mesh);
- fit iterations per second in the same window (the ceiling for updates per second);
- Stop latency: from the Stop click to the fit's thread having ended (Run enabled again).

Targets (issue 15 / issue 12 goal 4): first update <= 1 s, >= 5 new states per second, Stop
<= 0.5 s. Runs ``--runs`` times (default 3) and prints each run and the medians.

Usage: ``python benchmarks/bench_napari.py [--runs 3] [--window 8] [--threads 2]``; without a
display it re-runs itself under ``xvfb-run`` when that exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time


def _ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("_BENCH_NAPARI_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("bench_napari: needs a display (or xvfb-run)")
    env = dict(os.environ, _BENCH_NAPARI_XVFB="1")
    raise SystemExit(subprocess.call([xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv], env=env))


def _wait(app, cond, timeout_s: float) -> bool:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        if time.perf_counter() - t0 > timeout_s:
            return False
        time.sleep(0.002)
    return True


def one_run(viewer, w, app, window_s: float) -> dict:
    import numpy as np
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    name = w._fit_layer_name()
    updates: list[tuple[float, int, bytes]] = []

    def on_data(event=None):
        layer = viewer.layers[name]
        v = np.asarray(layer.vertices)
        updates.append((time.perf_counter(), int(layer.metadata.get("fit_iteration", 0) or 0), v.tobytes()))

    t_run = time.perf_counter()
    QTest.mouseClick(w.run_button, Qt.LeftButton)
    layer = viewer.layers[name]
    layer.events.data.connect(on_data)
    try:
        # the seeds were shown by the click itself: every data change from now on is a fitted state
        ok = _wait(app, lambda: len(updates) > 0 or not w.is_running, 600)
        if not ok or not updates:
            raise RuntimeError("the fit ended before its first update")
        t_first = updates[0][0] - t_run
        n0 = len(updates)
        it0 = w._last_step.iteration if w._last_step else 0
        t0 = time.perf_counter()
        _wait(app, lambda: not w.is_running, window_s)
        t1 = time.perf_counter()
        it1 = w._last_step.iteration if w._last_step else 0
        window = [u for u in updates[n0:] if u[0] <= t1]
        resent = sum(1 for a, b in zip(updates, updates[1:]) if a[2] == b[2])
        t_stop = time.perf_counter()
        QTest.mouseClick(w.stop_button, Qt.LeftButton)
        _wait(app, lambda: not w.is_running, 120)
        stop_s = time.perf_counter() - t_stop
    finally:
        layer.events.data.disconnect(on_data)
    return {
        "first_update_s": t_first,
        "updates_per_s": len(window) / (t1 - t0),
        "iterations_per_s": (it1 - it0) / (t1 - t0),
        "resent_unchanged": resent,
        "stop_s": stop_s,
        "iterations": it1,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--window", type=float, default=8.0, help="seconds of updates measured per run")
    p.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly)")
    args = p.parse_args(argv)
    _ensure_display()
    os.environ.setdefault(
        "NAPARI_DELTAMIC_CONFIG_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench-napari-cfg")
    )

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import napari
    from npe2 import PluginManifest
    from qtpy.QtWidgets import QApplication

    manifest = PluginManifest.from_distribution("napari-deltamic")
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    viewer.open_sample(manifest.name, "embryo")
    _, w = viewer.window.add_plugin_dock_widget(manifest.name, manifest.contributions.widgets[0].display_name)
    w.image_combo.set_layer(viewer.layers["embryo (synthetic)"])
    w.seed_source.setCurrentText("Points")
    w.seed_combo.set_layer(viewer.layers["seeds"])
    w.restore_defaults()
    image = viewer.layers["embryo (synthetic)"]
    print(
        f"sample embryo {image.data.shape} voxels of {tuple(image.scale)} um, 3 seeds, widget defaults, "
        f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for r in range(args.runs):
        row = one_run(viewer, w, app, args.window)
        rows.append(row)
        print(
            f"run {r + 1}: first update {row['first_update_s']:.2f} s, {row['updates_per_s']:.1f} updates/s "
            f"({row['iterations_per_s']:.1f} iterations/s), re-sent unchanged {row['resent_unchanged']}, "
            f"Stop {row['stop_s'] * 1000:.0f} ms (at iteration {row['iterations']})",
            flush=True,
        )
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    print(
        f"median of {len(rows)}: first update {med['first_update_s']:.2f} s (target <= 1), "
        f"{med['updates_per_s']:.1f} new states/s (target >= 5; fit {med['iterations_per_s']:.1f} it/s), "
        f"Stop {med['stop_s'] * 1000:.0f} ms (target <= 500), load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    w.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
