"""Zernike polynomials on the unit disc, indexed in Noll's order.

Noll (R. J. Noll, "Zernike polynomials and atmospheric turbulence", JOSA 66(3):207, 1976):
j = 1, 2, 3, ... runs over radial orders n = 0, 1, 2, ...; within an order |m| increases;
for m != 0 an even j carries cos(|m| phi) and an odd j carries sin(|m| phi). Polynomials are
normalised to unit RMS over the disc:
Z_j = sqrt(n + 1) R_n^0(rho) (m = 0), sqrt(2 (n + 1)) R_n^|m|(rho) cos|sin(|m| phi) (m != 0).
Examples: Z1 piston = 1, Z2 = 2 rho cos(phi) (tilt x), Z4 defocus = sqrt(3) (2 rho^2 - 1),
Z11 primary spherical = sqrt(5) (6 rho^4 - 6 rho^2 + 1).
"""

from __future__ import annotations

import math
import operator

import torch


def noll_to_nm(j: int) -> tuple[int, int]:
    """Noll index j >= 1 -> (n, m) with m < 0 for the sin terms."""
    if isinstance(j, bool) or not hasattr(j, "__index__"):
        raise TypeError(f"Noll index must be an integer, got {j!r}")
    j = operator.index(j)
    if j < 1:
        raise ValueError(f"Noll index must be >= 1, got {j}")
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    p = j - n * (n + 1) // 2 - 1  # position inside the radial order, 0-based
    m_abs = 2 * ((p + 1) // 2) if n % 2 == 0 else 2 * (p // 2) + 1
    if m_abs == 0:
        return n, 0
    return n, (m_abs if j % 2 == 0 else -m_abs)


def zernike_radial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    """Radial polynomial R_n^|m|(rho) (unnormalised, R(1) = 1)."""
    m = abs(int(m))
    if (n - m) % 2:
        return torch.zeros_like(rho)
    out = torch.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        c = (
            (-1) ** k
            * math.factorial(n - k)
            / (math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k))
        )
        out = out + c * rho ** (n - 2 * k)
    return out


def zernike_noll(j: int, rho: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Unit-RMS Zernike polynomial Z_j (Noll index) at polar coordinates (rho, phi)
    (broadcast together; rho in [0, 1], phi in radians from the x axis towards y)."""
    n, m = noll_to_nm(j)
    rho, phi = torch.broadcast_tensors(rho, phi)
    radial = zernike_radial(n, m, rho)
    if m == 0:
        return math.sqrt(n + 1) * radial
    ang = torch.cos(m * phi) if m > 0 else torch.sin(-m * phi)
    return math.sqrt(2 * (n + 1)) * radial * ang
