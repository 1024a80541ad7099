"""The mesh container passed between I/O, geometry, fitting and the plugin.

Conventions: vertices in micrometres, columns in (z, y, x) order (the image's array axes);
faces are 0-based int64 triangles. A multi-material mesh (several cells glued together) carries
``labels``: for each face the two regions on either side, ``labels[f] = (l1, l2)``: the face
normal n = (v1 - v0) x (v2 - v0), computed on the stored coordinates, points from region l1
into region l2 (the convention of the .rec files: measured on the bundled embryo, outer faces
are (0, cell) with normals pointing into the cell). 0 is the outside. So the faces of cell c
oriented outwards (normal leaving c) are those with l1 == c; faces with l2 == c must be flipped.
A plain mesh (labels None) is one closed surface with outward normals (positive signed volume).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Mesh:
    verts: np.ndarray  # (V, 3) float64, um, (z, y, x)
    faces: np.ndarray  # (F, 3) int64
    labels: np.ndarray | None = None  # (F, 2) int32 (l1, l2): normal points from l1 into l2; 0 = outside
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.verts = np.ascontiguousarray(np.asarray(self.verts, dtype=np.float64))
        self.faces = np.ascontiguousarray(np.asarray(self.faces, dtype=np.int64))
        if self.verts.ndim != 2 or self.verts.shape[1] != 3:
            raise ValueError(f"verts must have shape (V, 3), got {self.verts.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must have shape (F, 3), got {self.faces.shape}")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= len(self.verts)):
            raise ValueError(
                f"faces index out of range: [{self.faces.min()}, {self.faces.max()}] for {len(self.verts)} vertices"
            )
        if self.labels is not None:
            self.labels = np.ascontiguousarray(np.asarray(self.labels, dtype=np.int32))
            if self.labels.shape != (len(self.faces), 2):
                raise ValueError(f"labels must have shape (F, 2) = {(len(self.faces), 2)}, got {self.labels.shape}")

    @property
    def n_cells(self) -> int:
        """Number of labelled regions (cells); a plain closed surface counts as one."""
        if self.labels is None:
            return 1
        return int(self.labels.max())

    @property
    def cell_ids(self) -> np.ndarray:
        if self.labels is None:
            return np.array([1])
        ids = np.unique(self.labels)
        return ids[ids > 0]

    def face_intensity(self, outer: float = 1.0, shared: float = 2.0) -> np.ndarray:
        """Per-face membrane intensity: ``outer`` for faces on the boundary of the aggregate,
        ``shared`` for faces between two labelled cells (two bilayers)."""
        if self.labels is None:
            return np.full(len(self.faces), outer, dtype=np.float64)
        both = (self.labels[:, 0] > 0) & (self.labels[:, 1] > 0)
        return np.where(both, shared, outer).astype(np.float64)

    def copy(self, **changes) -> Mesh:
        out = replace(self, **changes)
        out.verts = out.verts.copy()
        out.faces = out.faces.copy()
        out.labels = None if out.labels is None else out.labels.copy()
        out.metadata = dict(out.metadata)
        return out
