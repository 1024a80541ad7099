"""The dock's Cells section: pick a cell on the canvas, refit it alone, delete, merge or split it;
undo and redo.

A click (press and release without a drag) on the fit's Surface layer or on its Labels layer,
with that layer selected and in pan/zoom mode, picks the cell under the cursor: in 3D the line of
sight through the click meets the mesh (a ray-triangle pick; the cell is the one the line enters
there) or, on the Labels layer, ``Labels.get_value`` along the view direction; in 2D the cell
holding the clicked point. The picked cell is shown opaque in its own colour (the Surface
colours) on a "picked cell" Surface layer and selected on the Labels layer.

Refit runs ``pipeline.cells.refit_cell`` (the cell in a crop around it, its neighbours frozen),
Delete / Merge / Split the pure edits of ``geometry.edit``; each runs in a worker with the
rasterisation and measurements of the result, then the Surface, the Labels layer and its
``features`` are replaced together. Merge takes the picked cell and the next one clicked; Split
the next two clicks, whose halfway plane cuts the picked cell. Every change pushes the mesh it
replaced on the undo stack (:data:`UNDO_DEPTH` states); Undo and Redo restore the exact arrays.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from qtpy.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout

from ._layers import CELL_COLORMAP, UNITS_ZYX, image_origin
from ._notify import _guarded, start_worker

#: the Surface layer showing the picked cell
HIGHLIGHT_LAYER = "picked cell"
#: mesh states kept for Undo
UNDO_DEPTH = 50
#: a press and release further apart than this (canvas pixels) is a drag (rotate, pan), no pick
CLICK_TOLERANCE_PX = 4.0


class CellsPanel(QGroupBox):
    """Refit / Delete / Merge / Split the picked cell, Undo / Redo, and what is picked."""

    def __init__(self):
        super().__init__("Cells")
        layout = QVBoxLayout(self)
        self.cell_status = QLabel("click a cell on the fit's Surface or Labels layer (with that layer selected)")
        self.cell_status.setWordWrap(True)
        layout.addWidget(self.cell_status)
        grid = QGridLayout()
        tips = {
            "refit_button": ("Refit cell", "fit the picked cell again in a crop around it, its neighbours frozen"),
            "delete_button": ("Delete", "remove the picked cell (membranes it shared stay as its neighbours' faces)"),
            "merge_button": ("Merge", "merge the picked cell with the next cell you click"),
            "split_button": ("Split", "click two points: the plane halfway between them cuts the picked cell"),
            "undo_button": ("Undo", "undo the last refit, delete, merge or split"),
            "redo_button": ("Redo", "redo what Undo undid"),
        }
        for k, (name, (text, tip)) in enumerate(tips.items()):
            button = QPushButton(text)
            button.setToolTip(tip)
            setattr(self, name, button)
            grid.addWidget(button, k // 3, k % 3)
        layout.addLayout(grid)

    @property
    def buttons(self) -> tuple:
        names = ("refit_button", "delete_button", "merge_button", "split_button", "undo_button", "redo_button")
        return tuple(getattr(self, n) for n in names)


def ray_pick(mesh, position, direction):
    """``(cell, point)`` where the line through ``position`` along ``direction`` (world um) first
    meets ``mesh`` coming from the viewer's side: the cell the line enters there (the labels'
    normal convention) and the point; ``(None, None)`` when it misses."""
    from napari.utils.geometry import find_nearest_triangle_intersection

    from deltamic_core.geometry.ops import face_labels

    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    p = np.asarray(position, dtype=np.float64)
    tri = mesh.verts[mesh.faces]
    reach = float(np.ptp(mesh.verts, axis=0).sum() + np.linalg.norm(p - mesh.verts.mean(axis=0))) + 1.0
    start = p - reach * d  # behind every triangle: the nearest hit to it is the front one
    index, point = find_nearest_triangle_intersection(start, d, tri)
    if index is None:
        return None, None
    l1, l2 = (int(v) for v in face_labels(mesh)[index])
    normal = np.cross(tri[index, 1] - tri[index, 0], tri[index, 2] - tri[index, 0])
    cell = l2 if float(d @ normal) > 0 else l1
    return (cell or l1 or l2), np.asarray(point, dtype=np.float64)


def _edit(action, mesh, args, grid):
    """Worker body: the edit, then the label image and measurements of its result."""
    from deltamic_core.geometry.edit import delete_cell, merge_cells, split_cell

    from ._results_actions import _rasterise_and_measure

    op = {"delete": delete_cell, "merge": merge_cells, "split": split_cell}[action]
    new = op(mesh, *args)
    return (new, *_rasterise_and_measure(new, grid))


def _refit(image, spacing, mesh, cell, psf, config, origin, grid):
    """Worker body: ``refit_cell`` then the label image and measurements of its result."""
    from deltamic_core.pipeline.cells import refit_cell

    from ._results_actions import _rasterise_and_measure

    new, _info = refit_cell(image, spacing, mesh, cell, psf, config, origin_um=origin)
    return (new, *_rasterise_and_measure(new, grid))


class CellEditor:
    """The Cells section's state: the picked cell, the pending Merge/Split clicks, undo/redo."""

    def __init__(self, widget, panel: CellsPanel):
        self.w = widget
        self.panel = panel
        self.picked: int | None = None
        self.mode = "pick"  # "merge" / "split": the next click(s) finish that edit
        self.split_points: list[np.ndarray] = []
        self.undo_stack: deque = deque(maxlen=UNDO_DEPTH)
        self.redo_stack: list = []
        self._workers: dict = {}
        panel.refit_button.clicked.connect(self.refit)
        panel.delete_button.clicked.connect(self.delete)
        panel.merge_button.clicked.connect(self.merge)
        panel.split_button.clicked.connect(self.split)
        panel.undo_button.clicked.connect(self.undo)
        panel.redo_button.clicked.connect(self.redo)
        widget.run_button.clicked.connect(self._forget)  # a new fit replaces the mesh: a fresh history
        layers = widget.viewer.layers
        layers.events.inserted.connect(lambda event: self._hook(event.value))
        for layer in layers:
            self._hook(layer)

    # ------------------------------------------------------------------ clicks
    def _hook(self, layer) -> None:
        if isinstance(layer, (self.w._layers.Surface, self.w._layers.Labels)):
            if self._on_mouse not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._on_mouse)

    def _on_mouse(self, layer, event):
        if event.button != 1 or getattr(layer, "mode", "pan_zoom") != "pan_zoom":
            return
        position = np.asarray(event.position, dtype=np.float64)
        direction = None if event.view_direction is None else np.asarray(event.view_direction, dtype=np.float64)
        displayed = list(event.dims_displayed)
        pos0 = np.asarray(event.pos, dtype=np.float64)
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = dragged or float(np.abs(np.asarray(event.pos) - pos0).max()) > CLICK_TOLERANCE_PX
            yield
        if not dragged:
            self.click(layer, position, direction, displayed)

    def _role(self, layer) -> str | None:
        w = self.w
        labels = getattr(w, "_labels_layer", None)
        if isinstance(layer, w._layers.Labels):
            return "labels" if labels is not None and layer.name == labels.name else None
        if layer.name in (w._fit_layer_name(), HIGHLIGHT_LAYER):
            return "surface"
        return None

    def _cell_at(self, layer, position, direction, displayed):
        """(cell or None, world point (z, y, x) or None) under a click on ``layer``."""
        from deltamic_core.pipeline.cells import cells_at

        role = self._role(layer)
        if role is None:
            return None, None
        mesh = self.w.result_mesh()
        world = position[-3:]
        if len(displayed) == 3 and direction is not None:
            cell, point = ray_pick(mesh, world, direction[-3:])
            if role == "labels":
                value = layer.get_value(position, view_direction=direction, dims_displayed=displayed, world=True)
                cell = int(value) if value else None
            return cell, point
        if role == "labels":
            value = layer.get_value(position, world=True)
            cell = int(value) if value else None
        else:
            cell = int(cells_at(mesh, world[None])[0]) or None
        return cell, world

    @_guarded
    def click(self, layer, position, direction, displayed):
        """What a click does: pick a cell, or finish a Merge (second cell) or Split (two points)."""
        cell, point = self._cell_at(layer, position, direction, displayed)
        if self._role(layer) is None:
            return None
        if self.mode == "split":
            if point is None:
                raise ValueError("Split: click on the cell (the cut is halfway between two clicked points)")
            self.split_points.append(point)
            if len(self.split_points) < 2:
                self.panel.cell_status.setText(f"Split cell {self.picked}: click the second point")
                return None
            return self._run_edit("split", (self.picked, *self.split_points), "Split")
        if cell is None:
            self.panel.cell_status.setText("no cell there: click on a cell")
            return None
        if self.mode == "merge":
            if cell == self.picked:
                raise ValueError(f"Merge: cell {cell} is the picked cell; click another cell")
            return self._run_edit("merge", (self.picked, cell), "Merge")
        self.pick(cell)
        return None

    def pick(self, cell: int | None) -> None:
        """Make ``cell`` the picked cell (None: nothing picked) and show it."""
        self.picked, self.mode, self.split_points = cell, "pick", []
        if cell is None:
            self.panel.cell_status.setText(
                "click a cell on the fit's Surface or Labels layer (with that layer selected)"
            )
        else:
            self.panel.cell_status.setText(f"cell {cell} picked")
        self._highlight()

    def _highlight(self) -> None:
        from deltamic_core.geometry import cell_surface

        viewer = self.w.viewer
        layer = viewer.layers[HIGHLIGHT_LAYER] if HIGHLIGHT_LAYER in viewer.layers else None
        labels = getattr(self.w, "_labels_layer", None)
        if self.picked is None:
            if layer is not None:
                viewer.layers.remove(layer)
            return
        mesh = self.w.result_mesh()
        s = cell_surface(mesh, self.picked)
        data = (s.verts.astype(np.float32), s.faces, np.full(len(s.verts), float(self.picked), np.float32))
        limits = (0.0, float(max(mesh.n_cells, 1)))  # the fit layer's: the same colour as there
        if layer is None:
            active = viewer.layers.selection.active
            viewer.add_surface(
                data, name=HIGHLIGHT_LAYER, colormap=CELL_COLORMAP, contrast_limits=limits, units=UNITS_ZYX, opacity=1.0
            )
            if active is not None:
                viewer.layers.selection.active = active  # the user goes on clicking where they were
        else:
            layer.data = data
            layer.contrast_limits = limits
        if labels is not None and labels in viewer.layers:
            labels.selected_label = self.picked

    # ------------------------------------------------------------------ actions
    def _picked_cell(self, what: str) -> int:
        if self.w.is_running:
            raise ValueError(f"{what}: a fit is running; stop it first")
        if self.picked is None:
            raise ValueError(f"{what}: pick a cell first (click it on the fit's Surface or Labels layer)")
        return self.picked

    def _grid(self):
        image = self.w.image_combo.layer()
        if image is None:
            return None
        return (tuple(image.data.shape[-3:]), self.w.spacing_um(), image_origin(image), image.name)

    @_guarded
    def refit(self, *args):
        """Refit the picked cell in a crop around it, its neighbours frozen (in a worker)."""
        w = self.w
        cell = self._picked_cell("Refit")
        image = w._image_layer()
        mesh = w.result_mesh()
        self.panel.cell_status.setText(f"refitting cell {cell}...")
        return start_worker(
            self,
            "cells",
            self.panel.buttons,
            _refit,
            w._image_volume(image),
            w.spacing_um(),
            mesh,
            cell,
            w.make_psf(),
            w.fit_config(),
            image_origin(image),
            self._grid(),
            on_done=lambda result: self._changed(mesh, result, keep=cell, what=f"cell {cell} refitted"),
            what="Refit",
        )

    @_guarded
    def delete(self, *args):
        """Delete the picked cell (in a worker)."""
        cell = self._picked_cell("Delete")
        return self._run_edit("delete", (cell,), "Delete")

    @_guarded
    def merge(self, *args) -> None:
        """Merge the picked cell with the next cell clicked."""
        cell = self._picked_cell("Merge")
        self.mode, self.split_points = "merge", []
        self.panel.cell_status.setText(f"Merge: click the cell to merge with cell {cell}")

    @_guarded
    def split(self, *args) -> None:
        """Split the picked cell by the plane halfway between the next two points clicked."""
        cell = self._picked_cell("Split")
        self.mode, self.split_points = "split", []
        self.panel.cell_status.setText(
            f"Split cell {cell}: click two points on it; the plane halfway between them cuts it"
        )

    def _run_edit(self, action: str, args, what: str):
        self._picked_cell(what)
        mesh = self.w.result_mesh()
        self.mode, self.split_points = "pick", []
        self.panel.cell_status.setText(f"{what}...")
        return start_worker(
            self,
            "cells",
            self.panel.buttons,
            _edit,
            action,
            mesh,
            args,
            self._grid(),
            on_done=lambda result: self._changed(mesh, result, keep=None, what=f"{what}: done"),
            what=what,
        )

    def _changed(self, before, result, *, keep, what: str) -> None:
        if self.w._closing:
            return
        self.undo_stack.append(before)
        self.redo_stack.clear()
        self._show(*result)
        self.pick(keep)
        self.panel.cell_status.setText(f"{what}; {result[0].n_cells} cells")

    def _show(self, mesh, labels, rows, grid) -> None:
        """The mesh on the fit's Surface layer, its label image and measurements on the Labels
        layer (the widget's own result path); the selected layer stays selected."""
        w = self.w
        active = w.viewer.layers.selection.active
        w._fit_layer = w._show_mesh(mesh, w._fit_layer_name())
        w._set_results(labels, rows, grid)
        if active is not None and active in w.viewer.layers:
            w.viewer.layers.selection.active = active

    # ------------------------------------------------------------------ undo / redo
    @_guarded
    def undo(self, *args):
        """Back to the mesh before the last change (Surface now, Labels in a worker)."""
        return self._step_history(self.undo_stack, self.redo_stack, "Undo")

    @_guarded
    def redo(self, *args):
        """Again the change Undo took back."""
        return self._step_history(self.redo_stack, self.undo_stack, "Redo")

    def _step_history(self, source, target, what: str):
        from ._results_actions import _rasterise_and_measure

        if self.w.is_running:
            raise ValueError(f"{what}: a fit is running; stop it first")
        if not source:
            raise ValueError(f"nothing to {what.lower()}")
        target.append(self.w.result_mesh())
        mesh = source.pop()
        self.w._fit_layer = self.w._show_mesh(mesh, self.w._fit_layer_name())
        self.pick(None)
        self.panel.cell_status.setText(f"{what}: {mesh.n_cells} cells")

        def done(result):
            if not self.w._closing:
                self._show(mesh, *result)

        return start_worker(
            self, "cells", self.panel.buttons, _rasterise_and_measure, mesh, self._grid(), on_done=done, what=what
        )

    def _forget(self, *args) -> None:
        if self.w.is_running:
            self.undo_stack.clear()
            self.redo_stack.clear()
            self.pick(None)
