"""Seeds clicked or deleted while a fit runs join or leave that fit, the other cells going on.

The fit started from the seeds layer has one cell per seed, in order (``pipeline.initial_mesh``).
:class:`LiveSeeds` keeps the seed centre of each cell of the running fit; when the click seeder
sees the seeds change during the fit, it posts the difference (seeds gone: their cells removed;
new seeds: spheres with their estimated radii) as one ``pipeline.cells.CellChange`` into the
fit's ``holder["changes"]``, which the fit applies before its next step. One change is in flight
at a time: when the fit has answered (a timer polls ``change.done``), the cell list follows the
answer (refused seeds said once, as a warning) and the seeds are compared again. A seed moved
during the fit is both: its cell leaves and a fresh sphere joins where the seed now is.
"""

from __future__ import annotations

import numpy as np

from ._notify import _show_error, _show_warning


def _key(centre) -> tuple:
    return tuple(np.round(np.asarray(centre, dtype=np.float64), 6))


class LiveSeeds:
    """The running fit's cells as seed centres, and the change posted to it."""

    poll_ms = 100

    def __init__(self, widget, seeder):
        from qtpy.QtCore import QTimer

        self.w = widget
        self.seeder = seeder
        self.cells: list | None = None  # seed centre (um) of cell k + 1 of the running fit
        self.refused: set = set()
        self.pending = None  # (CellChange, added seeds) in flight
        self._prepared = None  # the fit the cell list belongs to
        self._starting = False  # seeds changed while the fit's job was being prepared
        self._timer = QTimer(widget)
        self._timer.setInterval(self.poll_ms)
        self._timer.timeout.connect(self._poll)

    def _follow_fit(self) -> None:
        """A new fit: its cells are the seeds it started from (when it started from seeds)."""
        prepared = self.w.runner.last_prepared
        if prepared is self._prepared:
            return
        self._prepared, self.pending, self.refused = prepared, None, set()
        init = getattr(getattr(prepared, "job", None), "init", None)
        if init is not None and init.kind == "seeds":
            self.cells = [np.asarray(c, dtype=np.float64) for c in np.asarray(init.data[0]).reshape(-1, 3)]
        else:
            self.cells = None

    def sync(self, centres, radii) -> str:
        """Post the difference between the seeds and the running fit's cells; what happens, in words."""
        from deltamic_core.pipeline.cells import CellChange

        if self.w.runner.last_prepared is None:  # Run clicked, its worker still preparing the job
            self._starting = True
            return "the fit is starting: the seeds are compared with its cells once it runs"
        self._follow_fit()
        if self.cells is None:
            return "the running fit did not start from these seeds: they apply at the next Run"
        if self.pending is not None:
            return "adding/removing cells in the running fit..."
        now = {_key(c): (np.asarray(c, dtype=np.float64), float(r)) for c, r in zip(centres, radii)}
        fit_keys = [_key(c) for c in self.cells]
        remove = tuple(i + 1 for i, k in enumerate(fit_keys) if k not in now)
        add = [cr for k, cr in now.items() if k not in set(fit_keys) and k not in self.refused]
        if len(remove) == len(self.cells) and not add:
            return "the running fit keeps its last cell (a fit needs one): delete it after the fit"
        if not remove and not add:
            return f"{len(self.cells)} cell(s) in the running fit"
        change = CellChange(
            add_centres=np.array([c for c, _ in add], dtype=np.float64).reshape(-1, 3),
            add_radii=np.array([r for _, r in add], dtype=np.float64),
            remove=remove,
        )
        self.w.runner.post_change(change)
        self.pending = (change, add)
        self._timer.start()
        return f"running fit: {len(add)} cell(s) in, {len(remove)} out at its next step..."

    def fit_prepared(self) -> None:
        """The running fit's job is prepared: seeds changed meanwhile are compared now."""
        if self._starting:
            self._starting = False
            self.seeder.schedule()

    def _poll(self) -> None:
        if self.pending is None:
            self._timer.stop()
            return
        change, add = self.pending
        if not change.done.is_set():
            if not self.w.is_running:  # the fit ended first: nothing was applied
                self._timer.stop()
                self.pending, self.cells = None, None
                self.seeder.widget.seed_panel.show_message(
                    "the fit ended before the seed change: it applies at the next Run"
                )
            return
        self._timer.stop()
        self.pending = None
        if change.error is not None:
            _show_error(f"the running fit could not take the seed change: {change.error}")
            self.cells = None  # the fit and the seeds part ways until the next Run
            return
        for i in sorted(change.remove, reverse=True):
            del self.cells[i - 1]
        for (centre, _), cell in zip(add, change.added):
            if cell is None:
                self.refused.add(_key(centre))
            else:
                self.cells.append(centre)
        for note in change.notes:
            _show_warning(note)
        layer = self.w._fit_layer
        if layer is not None and layer in self.w.viewer.layers:  # colours by id 1..n, as in Labels
            layer.contrast_limits = (0.0, float(max(len(self.cells), 1)))
        self.seeder.schedule()  # the seeds may have changed meanwhile: compare again
