"""Speed of the geometry module on realistic sizes (prints numbers measured in one run).

    .venv/bin/python benchmarks/bench_geometry.py

- label_image on a 256^3 grid filled by the bundled 3-cell embryo, against a peer method
  (gpytoolbox's fast winding number on the voxel centres of each cell's bounding box, timed
  on a slab and extrapolated), and checks that both agree;
- remesh of the embryo and meshes_from_labels of the rasterised cells.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from deltamic_core.geometry import cell_surface, label_image, meshes_from_labels, orient_outward, remesh
from deltamic_core.io import read_mesh

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "deltamic_core" / "data" / "Sample01_007.rec"


def main() -> None:
    mesh = read_mesh(SAMPLE)
    lo, hi = mesh.verts.min(axis=0), mesh.verts.max(axis=0)
    shape = (256, 256, 256)
    spacing = float((hi - lo).max() / 240)
    origin = lo - 8 * spacing
    t0 = time.perf_counter()
    lab = label_image(mesh, shape, spacing, origin)
    t_ours = time.perf_counter() - t0
    print(
        f"label_image 256^3, 3 cells, {len(mesh.faces)} faces: {t_ours:.3f} s ({np.count_nonzero(lab)} voxels inside)"
    )

    # peer: gpytoolbox's fast winding number on a slab of cell 1's bounding box, extrapolated
    import gpytoolbox

    surf = cell_surface(orient_outward(mesh), 1)
    k_lo = np.floor((surf.verts.min(axis=0) - origin) / spacing).astype(int)
    k_hi = np.ceil((surf.verts.max(axis=0) - origin) / spacing).astype(int) + 1
    mid = (k_lo[0] + k_hi[0]) // 2
    zz, yy, xx = np.meshgrid(
        np.arange(mid, mid + 4), np.arange(k_lo[1], k_hi[1]), np.arange(k_lo[2], k_hi[2]), indexing="ij"
    )
    pts = origin + np.stack([zz, yy, xx], axis=-1).reshape(-1, 3) * spacing
    t0 = time.perf_counter()
    inside = gpytoolbox.fast_winding_number(pts, surf.verts, surf.faces.astype(np.int32)) > 0.5
    t_slab = time.perf_counter() - t0
    n_box = int(np.prod(k_hi - k_lo))
    t_peer = t_slab * n_box / len(pts) * 3  # three cells of similar size
    agree = np.mean(inside.reshape(zz.shape) == (lab[mid : mid + 4, k_lo[1] : k_hi[1], k_lo[2] : k_hi[2]] == 1))
    print(
        f"gpytoolbox.fast_winding_number peer (extrapolated from {len(pts)} points): {t_peer:.1f} s "
        f"-> ratio {t_peer / t_ours:.0f}x; voxel agreement on the slab {agree * 100:.3f}%"
    )

    t0 = time.perf_counter()
    out = remesh(mesh, 4.0)
    print(f"remesh embryo to 4 um: {len(mesh.faces)} -> {len(out.faces)} faces in {time.perf_counter() - t0:.2f} s")

    small = lab[::2, ::2, ::2]
    t0 = time.perf_counter()
    cells = meshes_from_labels(small, 2 * spacing, edge_um=4 * spacing)
    print(f"meshes_from_labels {small.shape}, 3 cells: {len(cells.faces)} faces in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
