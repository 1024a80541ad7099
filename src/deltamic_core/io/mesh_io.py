"""Reading and writing triangle meshes (.rec .obj .ply .stl .off .vtk .vtu) as :class:`Mesh`.

Frames and units. A :class:`~deltamic_core.mesh.Mesh` holds vertices in micrometres with columns
(z, y, x). Files hold them in their own frame, described by two properties:

* ``units``: 'voxel' (coordinates are voxel indices of the source stack, multiplied by a
  spacing to get micrometres) or a length unit ('um', 'nm', ...). Default: what a ``.rec``
  file's ``# units`` comment says, else 'voxel' for ``.rec`` files and for any file read with a
  ``spacing_um``, else 'um'.
* ``axis_order``: 'zyx' (columns in array axis order, the default) or 'xyz'. Swapping two
  columns mirrors the mesh, so when columns are reordered the winding of every triangle is
  reversed too: a surface whose normals point outwards in the file still does in the Mesh.

Vertices are never merged or reordered behind the caller's back (trimesh is called with
``process=False`` and ``maintain_order=True``). The one exception is STL, which stores every
triangle with its own three corners: there ``merge_vertices`` defaults to True so that the result
is a connected surface (exact duplicates only, first occurrence order).

Per-face labels (l1, l2) are kept in ``.rec``, ``.ply`` (face properties ``label1``/``label2``)
and ``.vtk``/``.vtu`` (cell data ``label1``/``label2``); OBJ, OFF and STL cannot store them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .._checks import check_spacing
from ..mesh import Mesh
from ._atomic import atomic_write
from .image import unit_to_um
from .rec import read_rec, write_rec

__all__ = ["read_mesh", "write_mesh", "MESH_SUFFIXES"]

MESH_SUFFIXES = (".rec", ".obj", ".ply", ".stl", ".off", ".vtk", ".vtu")
_TRIMESH_SUFFIXES = (".obj", ".ply", ".stl", ".off")
_MESHIO_SUFFIXES = (".vtk", ".vtu")


def _suffix(path) -> str:
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(
            f"unsupported mesh format {suffix or '(no extension)'!r} for {os.fspath(path)}: "
            f"expected one of {', '.join(MESH_SUFFIXES)}"
        )
    return suffix


def _check_axis_order(axis_order, name="axis_order") -> str:
    if not isinstance(axis_order, str) or axis_order.lower() not in ("zyx", "xyz"):
        raise ValueError(f"{name} must be 'zyx' or 'xyz', got {axis_order!r}")
    return axis_order.lower()


def _normalise_units(units, name="units") -> str:
    if not isinstance(units, str):
        raise TypeError(f"{name} must be a string such as 'um' or 'voxel', got {units!r}")
    key = units.strip().lower()
    if key in ("voxel", "voxels", "pixel", "pixels", "px"):
        return "voxel"
    try:
        factor = unit_to_um(key)
    except ValueError:
        raise ValueError(f"{name} must be 'voxel' or a length unit ('um', 'nm', ...), got {units!r}") from None
    if factor is None:
        return "voxel"
    return "um" if factor == 1.0 else key


# --------------------------------------------------------------------------------------------
# loaders returning file-frame coordinates
# --------------------------------------------------------------------------------------------


def _labels_from_columns(l1, l2, n_faces, path):
    if l1 is None or l2 is None:
        return None
    l1 = np.asarray(l1).reshape(-1)
    l2 = np.asarray(l2).reshape(-1)
    if len(l1) != n_faces or len(l2) != n_faces:
        warnings.warn(f"{path}: label1/label2 do not match the number of triangles; labels ignored", stacklevel=3)
        return None
    return np.stack([l1, l2], axis=1).astype(np.int32)


def _load_trimesh(path: str, suffix: str):
    import trimesh

    kwargs = {"maintain_order": True, "skip_materials": True} if suffix == ".obj" else {}
    try:
        loaded = trimesh.load(path, process=False, force="mesh", **kwargs)
    except Exception as exc:  # noqa: BLE001 - any parser failure is reported as unreadable
        raise ValueError(f"{path}: cannot read mesh ({type(exc).__name__}: {exc})") from None
    coords = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64)
    labels = None
    if suffix == ".ply":
        raw = loaded.metadata.get("_ply_raw", {}).get("face", {}).get("data")
        if raw is not None and getattr(raw, "dtype", None) is not None and raw.dtype.names:
            names = raw.dtype.names
            if "label1" in names and "label2" in names:
                labels = _labels_from_columns(raw["label1"], raw["label2"], len(faces), path)
    return coords, faces, labels


def _load_meshio(path: str):
    import contextlib
    import io as _io

    import meshio

    # meshio prints its reader errors and then calls sys.exit(1) when no reader succeeds: keep
    # both from the user's terminal and turn them into one ValueError
    printed = _io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            m = meshio.read(path)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - meshio raises anything, even SystemExit
        detail = " ".join(printed.getvalue().split())[:200] or f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot read mesh ({detail})") from None
    coords = np.asarray(m.points, dtype=np.float64)
    if coords.ndim == 2 and coords.shape[1] == 2:
        raise ValueError(f"{path}: 2D mesh (points have 2 coordinates); a 3D surface is required")
    face_blocks, l1_blocks, l2_blocks = [], [], []
    have_labels = "label1" in m.cell_data and "label2" in m.cell_data
    for i, block in enumerate(m.cells):
        if block.type == "triangle":
            tri = np.asarray(block.data, dtype=np.int64)
            take = slice(None)
        elif block.type == "quad":
            q = np.asarray(block.data, dtype=np.int64)
            tri = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
            take = np.concatenate([np.arange(len(q)), np.arange(len(q))])
        else:
            continue
        face_blocks.append(tri)
        if have_labels:
            l1_blocks.append(np.asarray(m.cell_data["label1"][i]).reshape(-1)[take])
            l2_blocks.append(np.asarray(m.cell_data["label2"][i]).reshape(-1)[take])
    if not face_blocks:
        raise ValueError(f"{path}: no triangles in the file (cell types: {[c.type for c in m.cells]})")
    faces = np.concatenate(face_blocks)
    labels = None
    if have_labels:
        labels = _labels_from_columns(np.concatenate(l1_blocks), np.concatenate(l2_blocks), len(faces), path)
    return coords, faces, labels


def _merge_duplicates(verts, faces):
    """Merge exactly equal vertices, keeping first occurrences in their original order."""
    _, first, inverse = np.unique(verts, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return verts[first[order]], rank[inverse.reshape(-1)][faces]


def _remove_unreferenced(verts, faces):
    used = np.zeros(len(verts), dtype=bool)
    used[faces.reshape(-1)] = True
    new_index = np.cumsum(used) - 1
    return verts[used], new_index[faces]


def read_mesh(
    path,
    spacing_um=None,
    units: str | None = None,
    *,
    axis_order: str | None = None,
    merge_vertices: bool | None = None,
    remove_unreferenced: bool = False,
) -> Mesh:
    """Read a triangle mesh into a :class:`Mesh` in micrometres, columns (z, y, x).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.rec``, ``.obj``, ``.ply``, ``.stl``, ``.off``, ``.vtk`` or ``.vtu`` file.
    spacing_um : float or sequence of 3 floats, optional
        Voxel size (z, y, x) in micrometres of the stack the coordinates refer to. Used when the
        coordinates are in voxel units: overrides a ``.rec`` file's ``# spacing`` comment; given
        for another format, it means that file's coordinates are voxel units too.
    units : str, optional
        Units of the file's coordinates: 'voxel' or a length unit ('um', 'nm', ...). Overrides
        the file's own declaration (see the module docstring for the defaults).
    axis_order : {'zyx', 'xyz'}, optional
        Column order of the file's coordinates (default: the ``.rec`` comment, else 'zyx').
    merge_vertices : bool, optional
        Merge exactly coincident vertices (default: only for STL).
    remove_unreferenced : bool
        Drop vertices used by no triangle.

    Returns
    -------
    Mesh
        ``metadata`` records what was done: 'units' ('um'), 'source_units', 'spacing_um'
        (z, y, x, or None), 'spacing_source' ('argument', 'file', 'default' or None),
        'axis_order', 'format', 'path'.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Unsupported extension, unreadable or malformed file, no triangles, NaN coordinates.
    """
    suffix = _suffix(path)
    path = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    spacing_arg = check_spacing(spacing_um, "spacing_um") if spacing_um is not None else None
    comments: dict = {}
    fmt = suffix[1:]
    if suffix == ".rec":
        rec = read_rec(path)
        coords, faces, labels, comments = rec.coords, rec.faces, rec.labels, rec.comments
        fmt = "rec-binary" if rec.binary else "rec-text"
    elif suffix in _MESHIO_SUFFIXES:
        coords, faces, labels = _load_meshio(path)
    else:
        coords, faces, labels = _load_trimesh(path, suffix)
    if len(faces) == 0:
        raise ValueError(f"{path}: the mesh has no triangles")
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"{path}: NaN or Inf vertex coordinates")

    if axis_order is not None:
        order = _check_axis_order(axis_order)
    else:
        order = _check_axis_order(comments.get("axis_order", "zyx"), f"{path}: '# axis_order' comment")
    if units is not None:
        src_units = _normalise_units(units)
        if src_units != "voxel" and spacing_arg is not None:
            raise ValueError(f"units={units!r} contradicts spacing_um (a spacing only applies to voxel units)")
    elif "units" in comments:
        src_units = _normalise_units(comments["units"], f"{path}: '# units' comment")
        if src_units != "voxel" and spacing_arg is not None:
            warnings.warn(
                f"{path} declares '# units = {comments['units']}': spacing_um={spacing_arg} ignored", stacklevel=2
            )
    else:
        src_units = "voxel" if (suffix == ".rec" or spacing_arg is not None) else "um"

    # Everything from here on is in (z, y, x) column order.
    if order == "xyz":
        coords = coords[:, ::-1]
        faces = faces[:, [0, 2, 1]]

    spacing, spacing_source = None, None
    if src_units == "voxel":
        if spacing_arg is not None:
            spacing, spacing_source = spacing_arg, "argument"
        elif "spacing" in comments:
            values = comments["spacing"].replace(",", " ").split()
            spacing = check_spacing([float(v) for v in values], f"{path}: '# spacing' comment")
            if order == "xyz":
                spacing = spacing[::-1]
            spacing_source = "file"
        else:
            spacing, spacing_source = (1.0, 1.0, 1.0), "default"
        verts = coords * np.asarray(spacing)
    else:
        verts = coords * unit_to_um(src_units)

    verts = np.ascontiguousarray(verts, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    if merge_vertices is None:
        merge_vertices = suffix == ".stl"
    if merge_vertices:
        verts, faces = _merge_duplicates(verts, faces)
    if remove_unreferenced:
        verts, faces = _remove_unreferenced(verts, faces)
    metadata = {
        "path": path,
        "format": fmt,
        "units": "um",
        "source_units": src_units,
        "spacing_um": spacing,
        "spacing_source": spacing_source,
        "axis_order": order,
    }
    extra = {k: v for k, v in comments.items() if k not in ("spacing", "axis_order", "units")}
    if extra:
        metadata["comments"] = extra
    return Mesh(verts, faces, labels, metadata)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _write_ply(fh, coords, faces, labels, vertex_properties=None) -> None:
    # Written by hand: trimesh stores PLY vertices as float32 and meshio drops face properties;
    # this keeps float64 coordinates and the per-face labels.
    props = dict(vertex_properties or {})
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by deltamic_core",
        f"element vertex {len(coords)}",
        "property double x",
        "property double y",
        "property double z",
    ]
    vfields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    for name, values in props.items():
        if not name.isidentifier() or name in ("x", "y", "z"):
            raise ValueError(f"vertex property name {name!r} must be a plain identifier other than x, y, z")
        if np.shape(values) != (len(coords),):
            raise ValueError(
                f"vertex property {name!r} must have one value per vertex ({len(coords)}), got shape {np.shape(values)}"
            )
        header.append(f"property double {name}")
        vfields.append((name, "<f8"))
    header += [
        f"element face {len(faces)}",
        "property list uchar int vertex_indices",
    ]
    fields = [("n", "u1"), ("idx", "<i4", (3,))]
    if labels is not None:
        header += ["property int label1", "property int label2"]
        fields += [("label1", "<i4"), ("label2", "<i4")]
    header.append("end_header")
    if len(coords) >= 2**31:
        raise ValueError("PLY with int32 indices cannot hold more than 2**31 vertices")
    record = np.empty(len(faces), dtype=np.dtype(fields))
    record["n"] = 3
    record["idx"] = faces
    if labels is not None:
        record["label1"] = labels[:, 0]
        record["label2"] = labels[:, 1]
    fh.write(("\n".join(header) + "\n").encode("ascii"))
    if props:
        vrec = np.empty(len(coords), dtype=np.dtype(vfields))
        for k, axis in enumerate("xyz"):
            vrec[axis] = coords[:, k]
        for name, values in props.items():
            vrec[name] = np.asarray(values, dtype=np.float64)
        fh.write(vrec.tobytes())
    else:
        fh.write(np.ascontiguousarray(coords, dtype="<f8").tobytes())
    fh.write(record.tobytes())


def write_mesh(
    path,
    mesh: Mesh,
    spacing_um=None,
    *,
    axis_order: str = "zyx",
    binary: bool = False,
    vertex_properties: dict | None = None,
) -> None:
    """Write ``mesh`` atomically; the format follows the extension.

    Parameters
    ----------
    path : str or os.PathLike
        ``.rec``, ``.obj``, ``.ply``, ``.stl``, ``.off``, ``.vtk`` or ``.vtu``.
    mesh : Mesh
        Vertices in micrometres, (z, y, x).
    spacing_um : float or sequence of 3 floats, optional
        When given, coordinates are written in voxel units (divided by the spacing), like the
        original ``.rec`` files; a ``.rec`` file then carries ``# spacing``, ``# axis_order``
        and ``# units = voxel`` comments. Otherwise micrometres are written (``# units = um``).
        Read the result back with ``read_mesh(path)`` (``.rec``) or
        ``read_mesh(path, spacing_um=...)`` (other formats: they cannot store the spacing).
    axis_order : {'zyx', 'xyz'}
        Column order in the file (winding reversed for 'xyz', see the module docstring).
    binary : bool
        Binary ``.rec`` (other formats: PLY, STL and VTK are always written binary, OBJ and OFF
        as text with round-trip precision).
    vertex_properties : dict {name: (V,) floats}, optional
        Per-vertex scalars (e.g. curvatures) written as extra double vertex properties of a
        ``.ply`` file (other formats refuse them), after x, y, z (so any PLY reader, e.g.
        trimesh, meshio or ParaView, sees them); ``read_mesh`` reads the geometry and labels.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a deltamic_core.mesh.Mesh, got {type(mesh).__name__}")
    suffix = _suffix(path)
    order = _check_axis_order(axis_order)
    spacing = check_spacing(spacing_um, "spacing_um") if spacing_um is not None else None
    if not np.all(np.isfinite(mesh.verts)):
        raise ValueError("mesh.verts contains NaN or Inf coordinates: refusing to write")
    coords = mesh.verts / np.asarray(spacing) if spacing is not None else mesh.verts.copy()
    faces = mesh.faces
    if order == "xyz":
        coords = coords[:, ::-1]
        faces = faces[:, [0, 2, 1]]
        file_spacing = None if spacing is None else spacing[::-1]
    else:
        file_spacing = spacing
    coords = np.ascontiguousarray(coords)
    labels = mesh.labels

    if suffix == ".rec":
        if labels is None:
            # A plain outward surface is one cell; in the .rec convention the normal points from
            # l1 into l2, so outward faces of cell 1 are (1, 0).
            labels = np.tile(np.array([[1, 0]], dtype=np.int32), (len(faces), 1))
        comments = {}
        if file_spacing is not None:
            comments["spacing"] = " ".join(repr(float(s)) for s in file_spacing)
        comments["axis_order"] = order
        comments["units"] = "voxel" if spacing is not None else "um"
        write_rec(path, coords, faces, labels, comments, binary=binary)
        return

    if labels is not None and suffix in (".obj", ".off", ".stl"):
        warnings.warn(
            f"{suffix} files cannot store the per-face labels; use .rec, .ply or .vtk to keep them",
            stacklevel=2,
        )
    if vertex_properties and suffix != ".ply":
        raise ValueError(f"vertex properties can only be written to .ply files, not {suffix}")
    if suffix == ".ply":
        with atomic_write(path, "wb") as fh:
            _write_ply(fh, coords, faces, labels, vertex_properties)
    elif suffix == ".stl":
        import trimesh

        tm = trimesh.Trimesh(coords, faces, process=False)
        with atomic_write(path, "wb") as fh:
            tm.export(file_obj=fh, file_type="stl")
    else:
        import meshio

        cell_data = {}
        if labels is not None and suffix in _MESHIO_SUFFIXES:
            cell_data = {"label1": [labels[:, 0].astype(np.int32)], "label2": [labels[:, 1].astype(np.int32)]}
        m = meshio.Mesh(coords, [("triangle", faces)], cell_data=cell_data)
        kwargs = {"binary": True} if suffix in _MESHIO_SUFFIXES else {}
        with warnings.catch_warnings():
            # meshio notes that OBJ/OFF indices are written as plain ints; harmless.
            warnings.simplefilter("ignore")
            with atomic_write(path, "path") as tmp:
                meshio.write(
                    tmp, m, file_format={".obj": "obj", ".off": "off", ".vtk": "vtk", ".vtu": "vtu"}[suffix], **kwargs
                )
