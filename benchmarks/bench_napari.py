"""Live napari numbers on the sample embryo with the widget's defaults (issue 12 goal 4, issue 15).

The user's path in a shown viewer: File > Open Sample (the synthetic 3-cell embryo), the widget
from the Plugins menu (``add_plugin_dock_widget``), the sample's seeds layer as the seeds
(radii estimated), every other setting at its default, Run clicked. Measured per run:

- time from the Run click to the first Surface update showing a fitted state (not the seeds),
  split into: the job prepared (worker), the first step done (worker), shown (main thread);
  run 1 is the first Run after opening napari (cold: imports, kernels), later runs are warm;
- Surface updates per second over the measuring window, each a new fit state (the script
  fingerprints the vertices of every update and counts any re-sent unchanged mesh);
- fit iterations per second in the same window (the ceiling for updates per second);
- the longest stall of the UI thread from the Run click to the end of Stop (a 10 ms QTimer
  heartbeat: the longest gap between two of its ticks), and the UI thread's own CPU time over
  the same span as a share of the wall time (the busy share from the heartbeat's gaps also
  counts the time the OS gave the thread no core, which on the shared 2 cores is most of it);
- what drawing costs on the main thread: the widget's layer update (napari + vispy set_data)
  and the canvas paint (vispy's draw event, first to last handler), per update;
- Stop latency: from the Stop click to the fit's thread having ended (Run enabled again).

After the runs, the same fit without a viewer (``pipeline.fit_steps`` in this process, same
threads) gives the fit's own iterations per second over the same iterations, for comparison.

Targets (issue 15 / issue 12 goal 4): first update <= 1 s, >= 5 new states per second, the UI
thread never blocks, Stop <= 0.5 s. Runs ``--runs`` times (default 3) and prints each run and
the medians.

Usage: ``python benchmarks/bench_napari.py [--runs 3] [--window 8] [--threads 2] [--ndisplay 2]
[--stop-at 80] [--wait-server]``;
without a display it re-runs itself under ``xvfb-run`` when that exists.
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
    """Run Qt's event loop (as napari does: idle until an event) until ``cond()`` or the timeout."""
    from qtpy.QtCore import QEventLoop, QTimer

    t0 = time.perf_counter()
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(5)

    def check():
        if cond() or time.perf_counter() - t0 > timeout_s:
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    if not cond():
        loop.exec_()
    timer.stop()
    return bool(cond())


class Heartbeat:
    """A 10 ms QTimer on the main thread: the longest gap between two ticks is the longest stall."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.gaps: list[float] = []

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now

    def start(self) -> None:
        self.gaps, self.last = [], time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return max(self.gaps, default=0.0)


class DrawClock:
    """Wall time of the canvas paints (vispy's draw event, from its first to its last handler)."""

    def __init__(self):
        from qtpy.QtWidgets import QApplication, QMainWindow, QWidget

        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible()]
        self.window = windows[0]
        backend = [c for w in windows for c in w.findChildren(QWidget) if type(c).__name__ == "CanvasBackendDesktop"]
        canvas = backend[0]._vispy_canvas  # vispy's SceneCanvas behind napari's canvas widget
        self.paints: list[float] = []
        self._t = None
        canvas.events.draw.connect(self._begin, position="first")
        canvas.events.draw.connect(self._end, position="last")

    def _begin(self, event) -> None:
        self._t = time.perf_counter()

    def _end(self, event) -> None:
        if self._t is not None:
            self.paints.append(time.perf_counter() - self._t)
            self._t = None


class WindowRepaints:
    """Counts the main window's repaints (its UpdateRequest events: each composes the whole
    window, the canvas's GL widget included, which under software GL costs tens of ms)."""

    def __init__(self, window):
        from qtpy.QtCore import QEvent, QObject

        outer = self

        class _Filter(QObject):
            def eventFilter(self, obj, event):
                if event.type() == QEvent.UpdateRequest:
                    outer.count += 1
                return False

        self.count = 0
        self._filter = _Filter()
        window.installEventFilter(self._filter)


def one_run(viewer, w, app, window_s: float, draw: DrawClock, stop_at: int = 0, repaints=None) -> dict:
    import numpy as np
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    name = w._fit_layer_name()
    updates: list[tuple[float, int, bytes]] = []
    connected = []

    def on_data(event=None):
        layer = viewer.layers[name]
        iteration = int(layer.metadata.get("fit_iteration", 0) or 0)
        if iteration > 0:  # a fitted state (the seeds' mesh, shown first, has none)
            updates.append((time.perf_counter(), iteration, np.asarray(layer.vertices).tobytes()))

    def connect(event=None):  # the worker's prepared job adds the layer (first run) or reuses it
        if name in viewer.layers and not connected:
            layer = viewer.layers[name]
            layer.events.data.connect(on_data)
            connected.append(layer)

    apply_s: list[float] = []
    apply = w._apply_step

    def timed_apply(step):
        t = time.perf_counter()
        apply(step)
        apply_s.append(time.perf_counter() - t)

    w._apply_step = timed_apply
    prepared_at = []
    on_prepared = getattr(w.runner, "_on_prepared", None)  # (absent before the job moved to the worker)
    if on_prepared is not None:
        w.runner._on_prepared = lambda *a: (prepared_at.append(time.perf_counter()), on_prepared(*a))
    connect()
    viewer.layers.events.inserted.connect(connect)
    beat = Heartbeat()
    n_paints = len(draw.paints)
    try:
        beat.start()
        t_run = time.perf_counter()
        cpu_run = time.thread_time()  # the UI thread's own CPU time (what it did, whatever the load)
        repaints0 = repaints.count if repaints is not None else 0
        QTest.mouseClick(w.run_button, Qt.LeftButton)
        mode = w.runner.mode  # "thread" while the fit server still warms up (the first Run)
        ok = _wait(app, lambda: len(updates) > 0 or not w.is_running, 600)
        if not ok or not updates:
            raise RuntimeError("the fit ended before its first update")
        t_first = updates[0][0] - t_run
        first_step_s = w._last_step.since_start if w._last_step else float("nan")
        n0 = len(updates)
        it0 = w._last_step.iteration if w._last_step else 0
        t0 = time.perf_counter()
        if stop_at:  # Stop as soon as the state of iteration stop_at is shown (the step after it runs)
            reached = lambda: not w.is_running or (w._last_step is not None and w._last_step.iteration >= stop_at)
            _wait(app, reached, 600)
        else:
            _wait(app, lambda: not w.is_running, window_s)
        t1 = time.perf_counter()
        it1 = w._last_step.iteration if w._last_step else 0
        window = [u for u in updates[n0:] if u[0] <= t1]
        resent = sum(1 for a, b in zip(updates, updates[1:]) if a[2] == b[2])
        stop_level = w._last_step.level if w._last_step else -1
        t_stop = time.perf_counter()
        QTest.mouseClick(w.stop_button, Qt.LeftButton)
        _wait(app, lambda: not w.is_running, 120)
        stop_s = time.perf_counter() - t_stop
        stall_s = beat.stop()
        ui_cpu_s = time.thread_time() - cpu_run
        n_repaints = (repaints.count - repaints0) if repaints is not None else 0
    finally:
        w._apply_step = apply
        if on_prepared is not None:
            w.runner._on_prepared = on_prepared
        viewer.layers.events.inserted.disconnect(connect)
        for layer in connected:
            layer.events.data.disconnect(on_data)
    paints = draw.paints[n_paints:]
    elapsed = time.perf_counter() - t_run
    # a Run during the server's warm-up starts in the thread and goes over to the server when ready
    handed = getattr(w.runner, "handed_over_at", None)
    served = [u for u in window if handed is not None and u[1] > handed]
    served_rate = (len(served) - 1) / (served[-1][0] - served[0][0]) if len(served) > 2 else float("nan")
    return {
        "paints_per_s": len(paints) / elapsed,
        "paint_share": sum(paints) / elapsed,
        "busy_share": sum(g - 0.010 for g in beat.gaps if g > 0.020) / elapsed,
        "ui_cpu_share": ui_cpu_s / elapsed,
        "window_repaints_per_s": n_repaints / elapsed,
        "step_s": float(np.median(w.step_times)) if w.step_times else float("nan"),
        "first_update_s": t_first,
        "prepared_s": (prepared_at[0] - t_run) if prepared_at else float("nan"),
        "first_step_s": first_step_s,
        "updates_per_s": len(window) / (t1 - t0),
        "iterations_per_s": (it1 - it0) / (t1 - t0),
        "resent_unchanged": resent,
        "stop_s": stop_s,
        "stall_s": stall_s,
        "apply_ms": 1000 * float(np.median(apply_s)) if apply_s else float("nan"),
        "paint_ms": 1000 * float(np.median(paints)) if paints else float("nan"),
        "iterations": it1,
        "stop_level": stop_level,
        "handed_over_at": float("nan") if handed is None else float(handed),
        "served_per_s": served_rate,
        "process": float(mode == "process"),
    }


def fit_alone(w, iterations: int) -> float:
    """Iterations per second of the same job stepped without a viewer (this process, same threads),
    over its first ``iterations`` steps after the first."""
    from deltamic_core.pipeline import fit_steps

    prepared = w.runner.last_prepared if w.runner.last_prepared is not None else w.prepare()
    steps = fit_steps(prepared, {})
    next(steps)
    t0 = time.perf_counter()
    for _ in range(iterations):
        next(steps)
    return iterations / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--window", type=float, default=8.0, help="seconds of updates measured per run")
    p.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly)")
    p.add_argument("--ndisplay", type=int, default=2, choices=(2, 3), help="napari's 2D (default) or 3D view")
    p.add_argument(
        "--stop-at",
        type=int,
        default=0,
        metavar="N",
        help="click Stop as soon as the state of iteration N is shown instead of after --window seconds "
        "(N = 80, the last step of the defaults' first level: Stop during the level change, which rebuilds "
        "the touching cells with shared membranes); the updates are counted from the first one to then",
    )
    p.add_argument(
        "--wait-server",
        action="store_true",
        help="every Run after the fit server has warmed up (run 1 is otherwise a thread fit when the server is not ready)",
    )
    p.add_argument(
        "--no-activity-dock",
        action="store_true",
        help="diagnostic: no napari progress bar (napari then shows no animated 'in progress' indicator, "
        "each of whose frames repaints the whole window)",
    )
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

    if args.no_activity_dock:
        from napari_deltamic._widget import DeltaMicWidget

        DeltaMicWidget._start_activity = lambda self, total: None
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
    viewer.dims.ndisplay = args.ndisplay
    draw = DrawClock()
    repaints = WindowRepaints(draw.window)
    _wait(app, lambda: False, 1.0)  # the first paints
    image = viewer.layers["embryo (synthetic)"]
    print(
        f"sample embryo {image.data.shape} voxels of {tuple(float(s) for s in image.scale)} um, 3 seeds, "
        f"widget defaults, {args.ndisplay}D view{', no activity dock' if args.no_activity_dock else ''}, torch threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for r in range(args.runs):
        if args.wait_server and w.runner.server is not None:
            _wait(app, w.runner.server.is_ready, 120)
        row = one_run(viewer, w, app, args.window, draw, stop_at=args.stop_at, repaints=repaints)
        rows.append(row)
        print(
            f"run {r + 1}{' (cold)' if r == 0 else ''}, {'server' if row['process'] else 'thread'}: first update {row['first_update_s']:.2f} s "
            f"(job prepared {row['prepared_s']:.2f} s, first step done {row['first_step_s']:.2f} s), "
            f"{row['updates_per_s']:.1f} updates/s ({row['iterations_per_s']:.1f} iterations/s), "
            f"re-sent unchanged {row['resent_unchanged']}, longest UI stall {row['stall_s'] * 1000:.0f} ms, "
            f"per update: layer {row['apply_ms']:.0f} ms + paint {row['paint_ms']:.0f} ms, "
            f"{row['paints_per_s']:.1f} paints/s ({100 * row['paint_share']:.0f}% of the time; UI thread busy "
            f"{100 * row['busy_share']:.0f}%, its CPU {100 * row['ui_cpu_share']:.0f}% of the wall time, "
            f"{row['window_repaints_per_s']:.1f} window repaints/s), "
            f"worker step {row['step_s']:.2f} s, "
            f"Stop {row['stop_s'] * 1000:.0f} ms (at iteration {row['iterations']}, level {row['stop_level']}), "
            + (
                f"handed over to the server after iteration {row['handed_over_at']:.0f} "
                f"({row['served_per_s']:.1f} new states/s from then), "
                if row["handed_over_at"] == row["handed_over_at"]
                else ""
            )
            + f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    n_alone = max(5, int(round(med["iterations"] / 2)))
    alone = fit_alone(w, n_alone)
    print(
        f"median of {len(rows)}: first update {med['first_update_s']:.2f} s (target <= 1; cold run "
        f"{rows[0]['first_update_s']:.2f} s), {med['updates_per_s']:.1f} new states/s (target >= 5; fit "
        f"{med['iterations_per_s']:.1f} it/s in napari, {alone:.1f} it/s alone over {n_alone} iterations), "
        f"longest UI stall {med['stall_s'] * 1000:.0f} ms, UI thread CPU {100 * med['ui_cpu_share']:.0f}% of the wall "
        f"time, {med['window_repaints_per_s']:.1f} window repaints/s, per update {med['apply_ms']:.0f} + "
        f"{med['paint_ms']:.0f} ms, Stop {med['stop_s'] * 1000:.0f} ms (target <= 500), "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    w.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
