"""Click to seed: a seeds Points layer whose points become seed spheres as the user clicks.

Each click adds a seed whose radius is estimated from the image around it by the pipeline's
estimator (``estimate_seed_radii``, or ``estimate_interior_radii`` for interior stains), with
the PSF width of the widget's PSF; the seed rules are the pipeline's (``seed_mesh``: a seed
smaller than a voxel is refused, overlapping spheres are shrunk until they touch) and what they
did is said in the widget. Adding, moving or deleting a point updates the initial mesh shown as
the fit's Surface layer (after a short pause, so a drag does not rebuild it on every mouse move);
during a fit the seeds added or deleted join or leave the running fit (:mod:`._live_seeds`).

A seed's estimate depends only on the image, its centre and the distance to its nearest other
seed (the estimator reads shells out to 0.75 x that distance and caps the radius at 0.45 x it),
so :class:`SeedRadii` keeps one estimate per (centre, nearest distance) and re-estimates only
the seeds a change touched: the radii are exactly those the command line estimates for the same
seeds (``deltamic fit --seeds`` without a radius column).
"""

from __future__ import annotations

import warnings

import numpy as np

from ._live_seeds import LiveSeeds

#: name of the Points layer "Click to seed" creates
SEEDS_LAYER = "seeds"
#: feature column of the seeds layer holding each seed's radius (um)
RADIUS_FEATURE = "radius_um"


def nearest_distances(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest other seed, its index) per seed; (inf, -1) for a single seed."""
    if len(centres) < 2:
        return np.full(len(centres), np.inf), np.full(len(centres), -1)
    from scipy.spatial import cKDTree

    d, i = cKDTree(centres).query(centres, k=2)
    return d[:, 1], i[:, 1]


class SeedRadii:
    """Seed radii estimated by the pipeline, cached per (centre, nearest-neighbour distance)."""

    def __init__(self):
        self._key = None
        self._cache: dict = {}
        self.n_estimated = 0  # estimator calls so far (the cache's effect, for the tests)

    def radii(self, image, spacing_um, origin_um, centres_um, *, stain="membrane", blur_um=None) -> np.ndarray:
        """Radii (um) of the seeds at ``centres_um`` (world um), as the pipeline estimates them."""
        from deltamic_core.pipeline import estimate_interior_radii, estimate_seed_radii

        key = (
            id(image),
            image.shape,
            tuple(spacing_um),
            tuple(origin_um),
            stain,
            None if blur_um is None else tuple(blur_um),
        )
        if key != self._key:
            self._key, self._cache = key, {}
        estimator = estimate_interior_radii if stain == "interior" else estimate_seed_radii
        centres = np.asarray(centres_um, dtype=np.float64).reshape(-1, 3)
        origin = np.asarray(origin_um, dtype=np.float64)
        nn, nn_index = nearest_distances(centres)
        out = np.empty(len(centres))
        for i, c in enumerate(centres):
            k = (tuple(np.round(c, 9)), round(float(nn[i]), 9))
            if k not in self._cache:
                # the seed with its nearest neighbour: the estimator sees the same distance
                pair = c[None] if nn_index[i] < 0 else np.stack([c, centres[nn_index[i]]])
                self._cache[k] = float(estimator(image, spacing_um, pair - origin, blur_um=blur_um)[0])
                self.n_estimated += 1
            out[i] = self._cache[k]
        return out


def seed_preview(centres_um, radii_um, spacing_um, *, edge_um=None, shape=None):
    """The pipeline's seed spheres of these seeds and what the seed rules said.

    Returns ``(mesh or None, messages)``: the mesh of ``pipeline.inputs.seed_mesh`` (overlapping
    spheres shrunk), or None when the rules refuse the seeds, with the warnings/error as text.
    """
    from deltamic_core.pipeline import InputError, InputWarning
    from deltamic_core.pipeline.inputs import seed_mesh

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        try:
            mesh = seed_mesh(centres_um, radii_um, spacing_um, edge_um=edge_um, shape=shape)
        except InputError as exc:
            return None, [str(exc)]
    return mesh, [str(w.message) for w in caught if issubclass(w.category, InputWarning)]


class ClickSeeder:
    """Keeps a seeds Points layer and the initial mesh of the widget in step with the clicks."""

    #: pause (ms) after the last change before the seeds are re-estimated and the mesh rebuilt
    delay_ms = 150

    def __init__(self, widget):
        from qtpy.QtCore import QTimer

        self.widget = widget
        self.radii = SeedRadii()
        self.layer = None
        self._pending_added: set[int] = set()
        self._busy = False
        self.messages: list[str] = []
        self._timer = QTimer(widget)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.delay_ms)
        self._timer.timeout.connect(self.update)
        self.live = LiveSeeds(widget, self)  # seeds changed during a fit join or leave it

    # ------------------------------------------------------------------ the layer
    def start(self):
        """The seeds Points layer (created on demand over the image), selected, in add mode."""
        import pandas as pd

        w = self.widget
        image = w._image_layer()
        layer = self.layer if self.layer is not None and self.layer in w.viewer.layers else None
        if layer is None and SEEDS_LAYER in w.viewer.layers:
            candidate = w.viewer.layers[SEEDS_LAYER]
            if isinstance(candidate, w._layers.Points) and candidate.ndim == 3:
                layer = candidate
        if layer is None:
            from ._layers import UNITS_ZYX

            layer = w.viewer.add_points(
                np.empty((0, 3)),
                ndim=3,
                name=SEEDS_LAYER,
                scale=tuple(image.scale[-3:]),
                translate=tuple(image.translate[-3:]),
                units=UNITS_ZYX,
                features=pd.DataFrame({RADIUS_FEATURE: np.empty(0)}),
                feature_defaults={RADIUS_FEATURE: np.nan},
                face_color="#ffb000",
                border_color="white",
                size=2.0 * float(np.mean(np.asarray(image.scale[-2:]))),
                opacity=0.8,
            )
        if RADIUS_FEATURE not in layer.features.columns:
            features = layer.features.copy()
            features[RADIUS_FEATURE] = np.nan
            layer.features = features
            layer.feature_defaults = {**dict(layer.feature_defaults.iloc[0]), RADIUS_FEATURE: np.nan}
        if self.layer is None or layer != self.layer:  # (napari hands out proxies: compare, not `is`)
            layer.events.data.connect(self._on_data)
            self.layer = layer
        w.seed_source.setCurrentText("Points")
        w.seed_combo.set_layer(layer)
        w.viewer.layers.selection.active = layer
        layer.mode = "add"
        if len(layer.data):
            self.schedule()
        return layer

    def _on_data(self, event) -> None:
        from napari.layers.base import ActionType

        action = getattr(event, "action", None)
        if self._busy or action not in (ActionType.ADDED, ActionType.REMOVED, ActionType.CHANGED):
            return
        indices = getattr(event, "data_indices", ()) or ()
        if action == ActionType.ADDED:
            n = len(self.layer.data) if self.layer is not None else 0
            self._pending_added.update(int(i) % n for i in indices if n)  # napari says -1 for "appended"
        elif action == ActionType.REMOVED:
            self._pending_added.clear()  # indices shifted; the new ones were handled already
        self.schedule()

    def schedule(self) -> None:
        self._timer.start()

    # ------------------------------------------------------------------ the update
    def centres_um(self) -> np.ndarray:
        layer = self.layer
        return np.asarray(layer.data)[:, -3:] * np.asarray(layer.scale[-3:]) + np.asarray(layer.translate[-3:])

    def update(self) -> None:
        """Estimate the radii of changed seeds, refuse new seeds the rules refuse, show the mesh."""
        layer = self.layer
        w = self.widget
        if layer is None or layer not in w.viewer.layers:
            return
        added, self._pending_added = self._pending_added, set()
        try:
            self._busy = True
            self.messages = self._update(layer, added)
        except Exception as exc:  # noqa: BLE001 - said in the widget, the viewer keeps going
            self.messages = [str(exc) or type(exc).__name__]
        finally:
            self._busy = False
        w.seed_panel.show_message("\n".join(self.messages))

    def _update(self, layer, added: set) -> list[str]:
        from deltamic_core.pipeline import psf_width_um

        w = self.widget
        image_layer = w._image_layer()
        spacing = w.spacing_um()
        origin = tuple(float(t) for t in image_layer.translate[-3:])
        volume = w._image_volume(image_layer)
        centres = self.centres_um()
        if len(centres) == 0:
            return ["click on the image to add a seed (one per cell)"]
        fixed = w.seed_panel.radius_um()
        if fixed is not None:
            radii = np.full(len(centres), fixed)
        else:
            blur = psf_width_um(w.make_psf())
            radii = self.radii.radii(volume, spacing, origin, centres, stain=w.stain(), blur_um=blur)
        messages = []
        vox = float(np.min(spacing))
        refused = sorted(i for i in added if i < len(radii) and not radii[i] >= vox)
        if refused:
            for i in refused:
                z, y, x = centres[i]
                messages.append(
                    f"seed at (z, y, x) = ({z:.2f}, {y:.2f}, {x:.2f}) um refused: its radius would be "
                    f"{radii[i]:.2f} um, smaller than a voxel ({vox:.3g} um) (too close to another seed?)"
                )
            keep = np.setdiff1d(np.arange(len(centres)), refused)
            layer.remove(refused)
            centres, radii = centres[keep], radii[keep]
            if len(centres) == 0:
                return messages
        self._show_radii(layer, radii)
        if w.is_running:
            return [*messages, f"{len(centres)} seed(s); " + self.live.sync(centres, radii)]
        mesh, notes = seed_preview(
            centres, radii, spacing, edge_um=w.seed_panel.edge_um(), shape=tuple(image_layer.data.shape[-3:])
        )
        messages.extend(notes)
        if mesh is not None:
            active = w.viewer.layers.selection.active
            w._show_mesh(mesh, w._fit_layer_name())
            if active is not None and active == layer:
                w.viewer.layers.selection.active = layer  # a new Surface layer took the selection: keep clicking
            messages.append(
                f"{len(centres)} seed(s), radius {radii.min():.2f}-{radii.max():.2f} um"
                + (" (estimated from the image)" if fixed is None else "")
            )
        return messages

    def _show_radii(self, layer, radii) -> None:
        """The radii as the layer's feature column and its point sizes (diameter, data units)."""
        features = layer.features.copy()
        features[RADIUS_FEATURE] = np.asarray(radii, dtype=float)
        layer.features = features
        yx = float(np.mean(np.asarray(layer.scale[-2:])))
        layer.size = 2.0 * np.asarray(radii, dtype=float) / yx
