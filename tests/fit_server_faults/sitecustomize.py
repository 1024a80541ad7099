"""Loaded at start-up by a fit server process of the tests (this folder first on PYTHONPATH):
with ``DELTAMIC_TEST_RENDER_INF_AFTER=N``, every ``Renderer.render`` after the N-th returns
infinities (the fit then diverges inside the server, as test_napari_live's fault does in a
thread). Never imported by the package."""

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
