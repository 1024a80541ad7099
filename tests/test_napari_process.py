"""The widget's fit in the fit server process (``deltamic_core.pipeline.fit_server``), driven
through the real buttons in a shown viewer: the fit runs in another process, Stop, a
divergence said once, a seed added during the fit, the fallback to a thread, no orphan."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from gui_helpers import click, start_fit
from test_napari_cells import test_seeds_added_and_removed_during_a_fit_join_and_leave_it as _seeds_during_fit
from test_napari_live import FIT_TIMEOUT_MS, _idle, _one_cell


@pytest.fixture(autouse=True)
def _process(monkeypatch):
    monkeypatch.setenv("DELTAMIC_FIT_PROCESS", "1")
    monkeypatch.setenv("DELTAMIC_FIT_THREADS", "1")


def _gone(proc) -> bool:
    return proc.poll() is not None


def _start_on_server(qtbot, w) -> None:
    """Run once the server has warmed up (a Run before that fits in the thread: see below)."""
    qtbot.waitUntil(w.runner.server.is_ready, timeout=FIT_TIMEOUT_MS)
    start_fit(qtbot, w)
    assert w.runner.mode == "process"


def _faults(monkeypatch) -> None:
    folder = Path(__file__).parent / "fit_server_faults"  # its sitecustomize loads in the server
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_the_fit_runs_in_the_server_stops_and_leaves_no_process_after_close(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors
):
    viewer = make_napari_viewer(show=True)
    w = _one_cell(viewer, gui_open_widget, embryo)
    proc = w.runner.server.process
    assert proc.pid != os.getpid() and not _gone(proc)
    _start_on_server(qtbot, w)
    layer = viewer.layers["crop fit"]
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 3, timeout=FIT_TIMEOUT_MS)
    click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert _idle(w)
    res = w.runner.last_result  # the server's final state: what the layer shows
    assert res.iterations == layer.metadata["fit_iteration"] < 500
    np.testing.assert_allclose(layer.vertices, res.mesh.verts, atol=1e-4)
    assert f"done: {res.iterations} iterations" in w.status_label.text()
    assert gui_errors == []
    assert not _gone(proc)  # the same server serves the next Run
    viewer.close()
    qtbot.waitUntil(lambda: _gone(proc), timeout=10_000)


@pytest.mark.slow
def test_a_divergence_in_the_server_is_said_once_and_keeps_the_last_good_mesh(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch
):
    _faults(monkeypatch)
    monkeypatch.setenv("DELTAMIC_TEST_RENDER_INF_AFTER", "3")
    viewer = make_napari_viewer(show=True)
    w = _one_cell(viewer, gui_open_widget, embryo)
    _start_on_server(qtbot, w)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert w.runner.mode == "process" and _idle(w)
    assert len(gui_errors) == 1 and "fit failed: fit diverged" in gui_errors[0], gui_errors
    assert np.isfinite(viewer.layers["crop fit"].vertices).all()


@pytest.mark.slow
def test_seeds_added_during_a_fit_in_the_server_join_it(
    make_napari_viewer, gui_open_widget, qtbot, gui_errors, embryo, monkeypatch
):
    import test_napari_cells

    monkeypatch.setattr(test_napari_cells, "start_fit", _start_on_server)
    _seeds_during_fit(make_napari_viewer, gui_open_widget, qtbot, gui_errors, embryo)


@pytest.mark.slow
def test_a_run_while_the_server_warms_up_fits_in_the_thread_and_the_next_run_in_the_server(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch, tmp_path
):
    gate = tmp_path / "warm-up may go on"
    _faults(monkeypatch)
    monkeypatch.setenv("DELTAMIC_TEST_WARM_UP_GATE", str(gate))
    viewer = make_napari_viewer(show=True)
    w = _one_cell(viewer, gui_open_widget, embryo, iterations=3)
    qtbot.waitUntil(lambda: w.runner.server.wait_connected(0), timeout=FIT_TIMEOUT_MS)
    assert not w.runner.server.is_ready()  # held in its warm-up
    start_fit(qtbot, w)
    assert w.runner.mode == "thread"  # the user does not wait for the server
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert w.runner.last_result.iterations == 3 == viewer.layers["crop fit"].metadata["fit_iteration"]
    gate.touch()
    _start_on_server(qtbot, w)  # warmed up now: the next Run is the server's
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert w.runner.last_result.iterations == 3 == viewer.layers["crop fit"].metadata["fit_iteration"]
    assert gui_errors == []


@pytest.mark.slow
def test_a_run_during_the_warm_up_goes_over_to_the_server_when_it_is_ready_and_continues_there(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch, tmp_path
):
    """Run while the server warms up: the fit starts in the thread at once; when the server is
    ready the running fit is handed over (its state: mesh, level, optimiser, histories) and
    continues there, iteration after iteration, from the thread's last state; Stop then stops
    the server's fit and the result is the server's."""
    gate = tmp_path / "warm-up may go on"
    _faults(monkeypatch)
    monkeypatch.setenv("DELTAMIC_TEST_WARM_UP_GATE", str(gate))
    viewer = make_napari_viewer(show=True)
    w = _one_cell(viewer, gui_open_widget, embryo)
    qtbot.waitUntil(lambda: w.runner.server.wait_connected(0), timeout=FIT_TIMEOUT_MS)
    assert not w.runner.server.is_ready()  # held in its warm-up
    start_fit(qtbot, w)
    assert w.runner.mode == "thread"
    layer = viewer.layers["crop fit"]
    shown = {}  # iteration -> vertices shown
    layer.events.data.connect(lambda e: shown.__setitem__(layer.metadata.get("fit_iteration"), layer.vertices.copy()))
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= 3, timeout=FIT_TIMEOUT_MS)
    assert w.runner._holder.get("sent") is None  # still in the thread
    gate.touch()  # the server warms up now, and takes the fit over when ready
    qtbot.waitUntil(lambda: w.runner._holder.get("sent") is True, timeout=FIT_TIMEOUT_MS)
    handed = w.runner._holder["handed_over_at"]
    qtbot.waitUntil(lambda: layer.metadata.get("fit_iteration", 0) >= handed + 3, timeout=FIT_TIMEOUT_MS)
    click(qtbot, w.stop_button)
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert _idle(w) and w.runner.handed_over_at == handed >= 3
    res = w.runner.last_result  # sent by the server at its end
    assert res.iterations == layer.metadata["fit_iteration"] > handed
    # one fit: every iteration once, the thread's losses kept as the start of the server's history
    assert w.loss_plot.iterations == list(range(1, res.iterations + 1))
    np.testing.assert_allclose(res.loss_history, w.loss_plot.losses, rtol=1e-5)
    np.testing.assert_allclose(layer.vertices, res.mesh.verts, atol=1e-4)
    # the server went on from the thread's last state: its first step moves the mesh as little
    # as the thread's steps did, far less than a fit started again from the seed would
    # (the viewer shows the newest state when it has time: not every iteration has a picture)
    last_thread = max(i for i in shown if i and i <= handed)
    first_server = min(i for i in shown if i and i > handed)
    first_shown = min(i for i in shown if i)
    moved = np.abs(shown[first_server] - shown[last_thread]).max()
    restarted = np.abs(shown[first_server] - shown[first_shown]).max()
    assert last_thread > first_shown and moved < restarted
    assert f"done: {res.iterations} iterations" in w.status_label.text()
    assert gui_errors == []


@pytest.mark.slow
def test_without_a_server_the_fit_runs_in_a_thread(
    make_napari_viewer, gui_open_widget, qtbot, embryo, gui_errors, monkeypatch
):
    from deltamic_core.pipeline.fit_server import FitServer, FitServerError

    def cannot_start(self):
        raise FitServerError("the fit server could not be started: test")

    monkeypatch.setattr(FitServer, "start", cannot_start)
    viewer = make_napari_viewer(show=True)
    with pytest.warns(UserWarning, match="fits run in the viewer's process"):
        w = _one_cell(viewer, gui_open_widget, embryo, iterations=3)
    assert w.runner.server is None
    start_fit(qtbot, w)
    assert w.runner.mode == "thread"
    qtbot.waitUntil(lambda: not w.is_running, timeout=FIT_TIMEOUT_MS)
    assert w.runner.last_result.iterations == 3 == viewer.layers["crop fit"].metadata["fit_iteration"]
    assert gui_errors == []


def test_the_job_sent_to_the_server_holds_the_image_once():
    import pickle

    from deltamic_core import pipeline
    from deltamic_core.pipeline.inputs import InitSpec
    from deltamic_core.pipeline.psfspec import PSFSpec
    from napari_deltamic._runner import Mailbox, server_worker

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (32, 80, 80), dtype=np.uint16)  # a camera's stack, not float32
    job = pipeline.FitJob(
        image_data=image,
        spacing_um=(1.0, 0.5, 0.5),
        init=InitSpec("seeds", data=(np.array([[16.0, 20.0, 20.0]]), None)),
        psf=PSFSpec(),
        iterations=2,
        levels=(1,),
        progress=False,
    )

    class Recorder:  # the fit server's end as the relay uses it
        def __init__(self):
            self.sent = []

        def wait_connected(self):
            return True

        def send(self, *msg):
            self.sent.append(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

        def poll(self, timeout_s):
            return True

        def recv(self):
            return ("end", None)

    server = Recorder()
    holder = {"stop": threading.Event(), "lock": threading.Lock(), "pending": {}}
    mailbox = Mailbox()
    for _ in server_worker(lambda: pipeline.prepare(job), server, holder, mailbox, 0.0):
        pass
    assert mailbox.error is None
    local = mailbox.take().prepared  # what the widget keeps: the job with the user's array
    assert local.job.image_data is image
    (data,) = server.sent
    kind, sent = pickle.loads(data)
    assert kind == "job" and sent.job.image_data is None
    np.testing.assert_array_equal(sent.image, image.astype(np.float32))  # the fitted image went
    assert len(data) < local.image.nbytes + image.nbytes // 2  # once: the float32 copy (and a small mesh)
