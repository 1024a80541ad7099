"""File input/output: TIFF stacks, triangle meshes (.rec and common formats), atomic writes.

Every file the project writes goes through :func:`atomic_write`, so an interrupted run never
leaves a half-written output behind.
"""

from ._atomic import atomic_write
from .image import ImageMeta, read_image, unit_to_um, write_tiff
from .mesh_io import MESH_SUFFIXES, read_mesh, write_mesh
from .rec import RecData, read_rec, write_rec

__all__ = [
    "atomic_write",
    "ImageMeta",
    "read_image",
    "write_tiff",
    "unit_to_um",
    "read_mesh",
    "write_mesh",
    "MESH_SUFFIXES",
    "RecData",
    "read_rec",
    "write_rec",
]
