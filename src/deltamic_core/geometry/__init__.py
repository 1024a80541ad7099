"""Mesh geometry: elementary operations, seeding, remeshing, measurements, rasterisation."""
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
    vertex_face_adjacency,
    volumes_by_label,
)
from .measure import Measurements, contact_matrix, contacts, measure
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
    "orient_outward",
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
    "label_image",
    "inside_mask",
]
