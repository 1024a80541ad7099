"""Mesh geometry: elementary operations, seeding, remeshing, measurements, rasterisation.

Everything works on :class:`~deltamic_core.mesh.Mesh` (vertices in um, (z, y, x) columns, faces
labelled (l1, l2) with the normal pointing from l1 into l2; a plain mesh is one outward cell).

- :mod:`.ops`: areas, normals, volumes (NumPy or differentiable torch), edges, adjacency,
  per-cell surfaces, orientation repair (``orient_outward``), ``merge_meshes``,
  ``snap_to_cells`` (a rebuilt mesh back onto the surfaces it was rasterised from).
- :mod:`.seed`: ``icosphere``, ``seed_spheres``, ``meshes_from_labels`` (one closed surface per
  label, or with ``shared=True`` one multi-material mesh from :mod:`.surface_nets`).
- :mod:`.remesh`: isotropic remeshing per interface patch with junction resampling
  (:mod:`._junctions`), volume preservation and ``triangle_quality``.
- :mod:`.measure`: ``measure`` (volume, area, sphericity, centroid per cell), ``contacts``.
- :mod:`.rasterize`: ``label_image`` (ray parity along x, per cell bounding box).
- :mod:`.contact_gap`: ``contact_labels_by_gap`` (a label image's contacts decided by the gap
  between the cells' surfaces, for the shared-membrane rebuild).
- :mod:`.edit`: cell edits on a multi-material mesh: ``delete_cell``, ``merge_cells``,
  ``split_cell`` (by the plane between two points), each keeping every cell closed.
- :mod:`.mechanics`: ``mechanics`` (per-vertex mean/Gaussian curvature per interface, contact
  angles on triple lines, Young-Dupre tensions, Laplace pressures).
"""

from .contact_gap import contact_labels_by_gap, touching_pairs, zip_new_contacts
from .edit import delete_cell, merge_cells, split_cell
from .measure import Measurements, contact_matrix, contacts, measure
from .mechanics import MechanicsResult, mechanics
from .ops import (
    cell_faces,
    cell_surface,
    cell_volumes,
    edge_lengths,
    edges,
    face_areas,
    face_labels,
    face_normals,
    merge_meshes,
    min_angles,
    offset_to_volume,
    orient_consistently,
    orient_outward,
    signed_volume,
    snap_to_cells,
    subdivide,
    vertex_face_adjacency,
    volumes_by_label,
)
from .rasterize import inside_mask, label_image
from .remesh import remesh, triangle_quality
from .seed import icosphere, meshes_from_labels, seed_spheres
from .surface_nets import surface_nets

__all__ = [
    "face_areas",
    "face_normals",
    "signed_volume",
    "edges",
    "edge_lengths",
    "min_angles",
    "vertex_face_adjacency",
    "face_labels",
    "cell_faces",
    "cell_surface",
    "cell_volumes",
    "merge_meshes",
    "volumes_by_label",
    "offset_to_volume",
    "snap_to_cells",
    "orient_outward",
    "subdivide",
    "orient_consistently",
    "icosphere",
    "seed_spheres",
    "meshes_from_labels",
    "surface_nets",
    "remesh",
    "triangle_quality",
    "measure",
    "contacts",
    "contact_matrix",
    "Measurements",
    "mechanics",
    "MechanicsResult",
    "label_image",
    "inside_mask",
    "contact_labels_by_gap",
    "touching_pairs",
    "zip_new_contacts",
    "delete_cell",
    "merge_cells",
    "split_cell",
]
