"""Loaded at start-up by a fit server process of the tests (this folder first on PYTHONPATH):
with ``DELTAMIC_TEST_RENDER_INF_AFTER=N``, every ``Renderer.render`` after the N-th returns
infinities (the fit then diverges inside the server, as test_napari_live's fault does in a
thread); with ``DELTAMIC_TEST_WARM_UP_GATE`` its warm-up waits for a file (below). Never
imported by the package."""

import os

_after = os.environ.get("DELTAMIC_TEST_RENDER_INF_AFTER")
if _after is not None:
    import itertools

    import torch

    from deltamic_core.render.renderer import Renderer

    _original = Renderer.render
    _calls = itertools.count(1)

    def _render(self, *args, **kwargs):
        out = _original(self, *args, **kwargs)
        return torch.full_like(out, float("inf")) if next(_calls) > int(_after) else out

    Renderer.render = _render

# with ``DELTAMIC_TEST_WARM_UP_GATE=PATH`` the server's warm-up waits (up to 5 min) until PATH
# exists: a test holds the server "still warming up" for as long as it needs
_gate = os.environ.get("DELTAMIC_TEST_WARM_UP_GATE")
if _gate is not None:
    import importlib
    import time

    # (not ``import deltamic_core.pipeline.run as _run``: that is the package's run() function)
    _run = importlib.import_module("deltamic_core.pipeline.run")

    _warm_up = _run.warm_up

    def _gated_warm_up(*args, **kwargs):
        t_end = time.monotonic() + 300
        while not os.path.exists(_gate) and time.monotonic() < t_end:
            time.sleep(0.05)
        return _warm_up(*args, **kwargs)

    _run.warm_up = _gated_warm_up
