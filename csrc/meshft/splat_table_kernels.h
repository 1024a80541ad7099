// Per-face loops of the real-space splat with a low-rank separable table PSF (splat_cpu.cpp):
//     h(d) ~= sum_r f_r,z(d_z) f_r,y(d_y) f_r,x(d_x),
// each factor f_r,a a cubic Hermite interpolant of values and derivatives tabulated on a lattice
// of step dh_a = h_a / q_a (q_a nodes per voxel), node j at -R_a + j dh_a, zero from the first
// node past the term's reach on (so the factor is C1 inside and continuous at its cut). A
// voxel t of a point's window is at d_t = d0 + t h_a with d0 in (-R_a, -R_a + h_a]: its lattice
// position is u0 + t q_a with the same fractional part phi for every t, so one point costs one
// set of Hermite weights per axis and 2 table reads per (term, window voxel).
//
// Included twice (AVX2+FMA and baseline clones) after splat_cpu_kernels.h, inside the same
// namespace: uses kLanes, kCopies, kMaxPatch, block_points, face_box, clip_box, Axis, Setup,
// TableAxis and TableSetup (the last two defined in splat_cpu.cpp).
// A block-averaged or blurred PSF (a coarse level) is just other tables: nothing here changes.

// Cubic Hermite basis at phi in [0, 1] (value weights w[4] for f0, f1, dh f0', dh f1' and
// their derivatives in phi, dw[4]).
inline void hermite_weights(double phi, double* w, double* dw) {
  const double p2 = phi * phi, p3 = p2 * phi;
  w[0] = 2 * p3 - 3 * p2 + 1;
  w[1] = -2 * p3 + 3 * p2;
  w[2] = p3 - 2 * p2 + phi;
  w[3] = p3 - p2;
  dw[0] = 6 * p2 - 6 * phi;
  dw[1] = -dw[0];
  dw[2] = 3 * p2 - 4 * phi + 1;
  dw[3] = 3 * p2 - 2 * phi;
}

// Window factors of one axis for kLanes coordinates y: first voxel fl, d0 and, for term r and
// t < W, g[(r * W + t) * kLanes + l] (and d g / d d when Deriv), unclipped.
template <bool Deriv>
inline void table_axis_block(const Axis& A, const TableAxis& T, int64_t rank, const double* y, double* fl,
                             double* d0, double* g, double* dg) {
  alignas(64) double w[4][kLanes], dw[4][kLanes];
  alignas(64) int64_t m0[kLanes];
  const double qd = static_cast<double>(T.q);
  for (int l = 0; l < kLanes; ++l) {
    fl[l] = std::floor((y[l] - A.o - A.R) / A.h) + 1.0;
    d0[l] = fl[l] * A.h + A.o - y[l];
    const double u = (d0[l] + A.R) / T.dh;  // in (0, q] up to rounding
    double m = std::floor(u);
    m = m < 0.0 ? 0.0 : (m > qd ? qd : m);
    const double phi = u - m;
    m0[l] = static_cast<int64_t>(m);
    double ww[4], dd[4];
    hermite_weights(phi, ww, dd);
    for (int k = 0; k < 4; ++k) {
      w[k][l] = ww[k];
      dw[k][l] = dd[k];
    }
  }
  const int W = static_cast<int>(A.W);
  const double inv_dh = 1.0 / T.dh;
  for (int64_t r = 0; r < rank; ++r) {
    const double* v = T.val + r * T.J;
    const double* D = T.der + r * T.J;
    for (int t = 0; t < W; ++t) {
      double* gt = g + (r * W + t) * kLanes;
      double* dgt = Deriv ? dg + (r * W + t) * kLanes : nullptr;
      for (int l = 0; l < kLanes; ++l) {
        const int64_t j = m0[l] + t * T.q;
        const double f0 = v[j], f1 = v[j + 1], s0 = T.dh * D[j], s1 = T.dh * D[j + 1];
        gt[l] = w[0][l] * f0 + w[1][l] * f1 + w[2][l] * s0 + w[3][l] * s1;
        // d = x_voxel - y grows with u: d/dd = (d/dphi) / dh
        if (Deriv) dgt[l] = (dw[0][l] * f0 + dw[1][l] * f1 + dw[2][l] * s0 + dw[3][l] * s1) * inv_dh;
      }
    }
  }
}

// The window voxels [lo, hi) of term r on one axis (its reach), within the clipped [clo, chi).
inline void term_range(const Axis& A, double reach, double d0, int clo, int chi, int& lo, int& hi) {
  const int a = static_cast<int>(std::ceil((-reach - d0) / A.h - 1e-9));
  const int b = static_cast<int>(std::floor((reach - d0) / A.h + 1e-9)) + 1;
  lo = std::max(clo, a);
  hi = std::min(chi, b);
}

// One term's clipped window: rows of N (> 0: a compile-time length, the loop unrolls) or n x voxels.
template <typename T, int N>
inline void scatter_term(const double* gz_, const T* gy, const T* gx, double s, const int* lo, const int* hi,
                         int n, T* base, int64_t sz, int64_t sy) {
  const int len = N > 0 ? N : n;
  for (int tz = lo[0]; tz < hi[0]; ++tz) {
    const T az = static_cast<T>(s * gz_[tz * kLanes]);
    if (az == T(0)) continue;
    T* plane = base + tz * sz;
    for (int ty = lo[1]; ty < hi[1]; ++ty) {
      const T a = az * gy[ty];
      T* row = plane + ty * sy;
      for (int tx = 0; tx < len; ++tx) row[tx] += a * gx[tx];
    }
  }
}

template <typename T>
inline void table_scatter_point(const Setup& S, const TableSetup& TS, const double* const* g, const double* d0,
                                int l, double s, const int* clo, const int* chi, T* base, int64_t sz, int64_t sy) {
  const int Wz = static_cast<int>(S.ax[0].W), Wy = static_cast<int>(S.ax[1].W), Wx = static_cast<int>(S.ax[2].W);
  T gx[kMaxWindow], gy[kMaxWindow];
  for (int64_t r = 0; r < TS.rank; ++r) {
    int lo[3], hi[3];
    bool empty = false;
    for (int a = 0; a < 3; ++a) {
      term_range(S.ax[a], TS.t[a].reach[r], d0[a * kLanes + l], clo[a], chi[a], lo[a], hi[a]);
      empty |= lo[a] >= hi[a];
    }
    if (empty) continue;
    const double* gz_ = g[0] + r * Wz * kLanes;
    const double* gy_ = g[1] + r * Wy * kLanes;
    const double* gx_ = g[2] + r * Wx * kLanes;
    const int n = hi[2] - lo[2];
    for (int t = 0; t < n; ++t) gx[t] = static_cast<T>(gx_[(lo[2] + t) * kLanes + l]);
    for (int t = lo[1]; t < hi[1]; ++t) gy[t] = static_cast<T>(gy_[t * kLanes + l]);
    const double* gz = gz_ + l;
    T* b = base + lo[2];
    switch (n) {
      case 1: scatter_term<T, 1>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 2: scatter_term<T, 2>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 3: scatter_term<T, 3>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 4: scatter_term<T, 4>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 5: scatter_term<T, 5>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 6: scatter_term<T, 6>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 7: scatter_term<T, 7>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 8: scatter_term<T, 8>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      case 9: scatter_term<T, 9>(gz, gy, gx, s, lo, hi, n, b, sz, sy); break;
      default: scatter_term<T, 0>(gz, gy, gx, s, lo, hi, n, b, sz, sy);
    }
  }
}

// All terms of one point at once (rank <= kFusedRank): per (z, y) row of the union of the
// terms' windows the row gets sum_r (s a_r(z) b_r(y)) c_r(x), one load and store per voxel for
// every term (one term after the other stored and re-read each row R times). The factors are
// exactly 0 beyond a term's reach, so the union's extra products add zeros: the same sums.
constexpr int kFusedRank = 16;

template <typename T, int N>
inline void scatter_fused_rows(const T (*cz)[kFusedRank], const T (*cy)[kFusedRank], const T (*gx)[kMaxWindow],
                               int R, const int* lo, const int* hi, int n, T* base, int64_t sz, int64_t sy) {
  const int len = N > 0 ? N : n;
  for (int tz = lo[0]; tz < hi[0]; ++tz) {
    const T* az = cz[tz];
    T* plane = base + tz * sz;
    for (int ty = lo[1]; ty < hi[1]; ++ty) {
      const T* by = cy[ty];
      T c[kFusedRank];
      bool any = false;
      for (int r = 0; r < R; ++r) {
        c[r] = az[r] * by[r];
        any |= c[r] != T(0);
      }
      if (!any) continue;
      T* row = plane + ty * sy;
      T acc[N > 0 ? N : kMaxWindow];
      for (int tx = 0; tx < len; ++tx) acc[tx] = row[tx];
      for (int r = 0; r < R; ++r) {
        const T cr = c[r];
        const T* gr = gx[r];
        for (int tx = 0; tx < len; ++tx) acc[tx] += cr * gr[tx];
      }
      for (int tx = 0; tx < len; ++tx) row[tx] = acc[tx];
    }
  }
}

template <typename T>
inline void table_scatter_point_fused(const Setup& S, const TableSetup& TS, const double* const* g, const double* d0,
                                      int l, double s, const int* clo, const int* chi, T* base, int64_t sz,
                                      int64_t sy) {
  const int W[3] = {static_cast<int>(S.ax[0].W), static_cast<int>(S.ax[1].W), static_cast<int>(S.ax[2].W)};
  const int R = static_cast<int>(TS.rank);
  int lo[3] = {kMaxWindow, kMaxWindow, kMaxWindow}, hi[3] = {0, 0, 0};
  for (int r = 0; r < R; ++r) {
    int tl[3], th[3];
    bool empty = false;
    for (int a = 0; a < 3; ++a) {
      term_range(S.ax[a], TS.t[a].reach[r], d0[a * kLanes + l], clo[a], chi[a], tl[a], th[a]);
      empty |= tl[a] >= th[a];
    }
    if (empty) continue;
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], tl[a]);
      hi[a] = std::max(hi[a], th[a]);
    }
  }
  if (lo[0] >= hi[0] || lo[1] >= hi[1] || lo[2] >= hi[2]) return;
  // a term empty at this point (none of its window inside) has factors that are 0 wherever
  // another term's window is (its reach excludes those voxels) or outside the clip: still exact
  alignas(64) T cz[kMaxWindow][kFusedRank], cy[kMaxWindow][kFusedRank], gx[kFusedRank][kMaxWindow];
  for (int r = 0; r < R; ++r) {
    for (int t = lo[0]; t < hi[0]; ++t) cz[t][r] = static_cast<T>(s * g[0][(r * W[0] + t) * kLanes + l]);
    for (int t = lo[1]; t < hi[1]; ++t) cy[t][r] = static_cast<T>(g[1][(r * W[1] + t) * kLanes + l]);
    for (int t = lo[2]; t < hi[2]; ++t) gx[r][t - lo[2]] = static_cast<T>(g[2][(r * W[2] + t) * kLanes + l]);
  }
  const int n = hi[2] - lo[2];
  T* b = base + lo[2];
  switch (n) {
    case 5: scatter_fused_rows<T, 5>(cz, cy, gx, R, lo, hi, n, b, sz, sy); break;
    case 6: scatter_fused_rows<T, 6>(cz, cy, gx, R, lo, hi, n, b, sz, sy); break;
    case 7: scatter_fused_rows<T, 7>(cz, cy, gx, R, lo, hi, n, b, sz, sy); break;
    case 8: scatter_fused_rows<T, 8>(cz, cy, gx, R, lo, hi, n, b, sz, sy); break;
    case 9: scatter_fused_rows<T, 9>(cz, cy, gx, R, lo, hi, n, b, sz, sy); break;
    default: scatter_fused_rows<T, 0>(cz, cy, gx, R, lo, hi, n, b, sz, sy);
  }
}

// Per-thread scratch of the factors: 3 axes x rank x W x kLanes (value, derivative) and d0.
struct TableScratch {
  std::vector<double> buf;
  double* g[3];
  double* dg[3];
  double d0[3 * kLanes];
  TableScratch(const Setup& S, const TableSetup& TS, bool deriv) {
    int64_t n = 0;
    for (int a = 0; a < 3; ++a) n += TS.rank * S.ax[a].W * kLanes;
    buf.assign((deriv ? 2 : 1) * n + 8, 0.0);
    double* p = buf.data();
    for (int a = 0; a < 3; ++a) {
      g[a] = p;
      p += TS.rank * S.ax[a].W * kLanes;
    }
    for (int a = 0; a < 3; ++a) {
      dg[a] = deriv ? p : nullptr;
      if (deriv) p += TS.rank * S.ax[a].W * kLanes;
    }
  }
};

template <typename T>
void table_forward_faces(const Setup& S, const TableSetup& TS, const T* tri, const T* strength,
                         const int64_t* face_rule, const int64_t* rule_start, const double* lam, const double* rw,
                         int64_t f0, int64_t f1, T* img) {
  TableScratch sc(S, TS, false);
  const bool fused = TS.rank <= kFusedRank;
  alignas(64) double y[3][kLanes], fl[3][kLanes];
  std::vector<T> patch(kCopies * 1024);
  const int64_t zero[3] = {0, 0, 0};
  const int64_t full[3] = {S.ax[0].n, S.ax[1].n, S.ax[2].n};
  for (int64_t f = f0; f < f1; ++f) {
    const T* c = tri + 9 * f;
    const double sf = static_cast<double>(strength[f]);
    if (sf == 0.0) continue;
    const int64_t r = face_rule[f];
    const int64_t q0 = rule_start[r], q1 = rule_start[r + 1];
    int64_t b[3], e[3];
    for (int a = 0; a < 3; ++a) {
      const double u = c[a], v = c[3 + a], w = c[6 + a];
      face_box(S.ax[a], std::min(u, std::min(v, w)), std::max(u, std::max(v, w)), b[a], e[a]);
    }
    const int64_t ez = e[0] - b[0], ey = e[1] - b[1], ex = e[2] - b[2];
    if (ez <= 0 || ey <= 0 || ex <= 0) continue;
    const int64_t cs = ez * ey * ex;
    const bool local = cs <= kMaxPatch;
    if (local) {
      if (static_cast<int64_t>(patch.size()) < kCopies * cs) patch.resize(kCopies * cs);
      std::fill(patch.begin(), patch.begin() + kCopies * cs, T(0));
    }
    for (int64_t qb = q0; qb < q1; qb += kLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kLanes, q1 - qb));
      block_points<T>(c, lam, qb, n, y);
      for (int a = 0; a < 3; ++a)
        table_axis_block<false>(S.ax[a], TS.t[a], TS.rank, y[a], fl[a], sc.d0 + a * kLanes, sc.g[a], nullptr);
      const int64_t* bb = local ? b : zero;
      const int64_t* ee = local ? e : full;
      T* dst = local ? patch.data() : img;
      const int64_t sz = local ? ey * ex : S.Y * S.X, sy = local ? ex : S.X;
      for (int l = 0; l < n; ++l) {
        const int64_t i0[3] = {static_cast<int64_t>(fl[0][l]), static_cast<int64_t>(fl[1][l]),
                               static_cast<int64_t>(fl[2][l])};
        int lo[3], hi[3];
        if (!clip_box(S, i0, bb, ee, lo, hi)) continue;
        const double s = sf * rw[qb + l];
        T* base = dst + (local ? (l % kCopies) * cs : 0) + (i0[0] - bb[0]) * sz + (i0[1] - bb[1]) * sy +
                  (i0[2] - bb[2]);
        if (fused)
          table_scatter_point_fused<T>(S, TS, sc.g, sc.d0, l, s, lo, hi, base, sz, sy);
        else
          table_scatter_point<T>(S, TS, sc.g, sc.d0, l, s, lo, hi, base, sz, sy);
      }
    }
    if (!local) continue;
    for (int64_t iz = 0; iz < ez; ++iz)
      for (int64_t iy = 0; iy < ey; ++iy) {
        const T* p = patch.data() + (iz * ey + iy) * ex;
        T* row = img + ((b[0] + iz) * S.Y + (b[1] + iy)) * S.X + b[2];
        for (int64_t ix = 0; ix < ex; ++ix) {
          T acc = p[ix];
          for (int k = 1; k < kCopies; ++k) acc += p[k * cs + ix];
          row[ix] += acc;
        }
      }
  }
}

// One term's sums over its clipped window (x rows of N > 0 voxels, a compile-time length, or n):
// f = (g_z, dg_z, g_y, dg_y) strided by kLanes, gx/dx the x factors from the row's first voxel.
template <typename T, int N>
inline void gather_term(const double* const* f, const double* gx, const double* dx, const int* lo, const int* hi,
                        int n, const T* base, int64_t sz, int64_t sy, double* o) {
  const int len = N > 0 ? N : n;
  double val = 0, ddz = 0, ddy = 0, ddx = 0;
  for (int tz = lo[0]; tz < hi[0]; ++tz) {
    double a0 = 0, ady = 0, a1 = 0;
    const T* plane = base + tz * sz;
    for (int ty = lo[1]; ty < hi[1]; ++ty) {
      const T* row = plane + ty * sy;
      double x0 = 0, x1 = 0;
      for (int tx = 0; tx < len; ++tx) {
        const double v = static_cast<double>(row[tx]);
        x0 += gx[tx] * v;
        x1 += dx[tx] * v;
      }
      const double gyv = f[2][ty * kLanes];
      a0 += gyv * x0;
      ady += f[3][ty * kLanes] * x0;
      a1 += gyv * x1;
    }
    const double gzv = f[0][tz * kLanes];
    val += gzv * a0;
    ddz += f[1][tz * kLanes] * a0;
    ddy += gzv * ady;
    ddx += gzv * a1;
  }
  o[0] = val;
  o[1] = ddz;
  o[2] = ddy;
  o[3] = ddx;
}

// Sums of one point over its clipped window: out = (<grad, h>, <grad, dh/dd_z>, .._y, .._x).
template <typename T>
inline void table_gather_point(const Setup& S, const TableSetup& TS, const double* const* g,
                               const double* const* dg, const double* d0, int l, const int* clo, const int* chi,
                               const T* base, int64_t sz, int64_t sy, double* out) {
  const int Wz = static_cast<int>(S.ax[0].W), Wy = static_cast<int>(S.ax[1].W), Wx = static_cast<int>(S.ax[2].W);
  double val = 0, ddz = 0, ddy = 0, ddx = 0;
  double gx[kMaxWindow], dx[kMaxWindow];
  for (int64_t r = 0; r < TS.rank; ++r) {
    int lo[3], hi[3];
    bool empty = false;
    for (int a = 0; a < 3; ++a) {
      term_range(S.ax[a], TS.t[a].reach[r], d0[a * kLanes + l], clo[a], chi[a], lo[a], hi[a]);
      empty |= lo[a] >= hi[a];
    }
    if (empty) continue;
    const double *gz_ = g[0] + r * Wz * kLanes, *dz_ = dg[0] + r * Wz * kLanes;
    const double *gy_ = g[1] + r * Wy * kLanes, *dy_ = dg[1] + r * Wy * kLanes;
    const double *gx_ = g[2] + r * Wx * kLanes, *dx_ = dg[2] + r * Wx * kLanes;
    const int n = hi[2] - lo[2];
    for (int t = 0; t < n; ++t) {
      gx[t] = gx_[(lo[2] + t) * kLanes + l];
      dx[t] = dx_[(lo[2] + t) * kLanes + l];
    }
    const double* f[4] = {gz_ + l, dz_ + l, gy_ + l, dy_ + l};
    const T* b = base + lo[2];
    double o[4];
    switch (n) {
      case 1: gather_term<T, 1>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 2: gather_term<T, 2>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 3: gather_term<T, 3>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 4: gather_term<T, 4>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 5: gather_term<T, 5>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 6: gather_term<T, 6>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 7: gather_term<T, 7>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 8: gather_term<T, 8>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      case 9: gather_term<T, 9>(f, gx, dx, lo, hi, n, b, sz, sy, o); break;
      default: gather_term<T, 0>(f, gx, dx, lo, hi, n, b, sz, sy, o);
    }
    val += o[0];
    ddz += o[1];
    ddy += o[2];
    ddx += o[3];
  }
  out[0] = val;
  out[1] = ddz;
  out[2] = ddy;
  out[3] = ddx;
}

// The adjoint of table_scatter_point_fused: all terms of one point at once, the per-term sums
// vectorised over the terms (RP: the rank padded to a multiple of 4 with zero factors), each
// window voxel read once. The same sums as table_gather_point (zeros added beyond the reaches).
template <typename T, int RP>
inline void gather_fused(const double (*f)[kFusedRank], int nz, int ny, int n, const T* base, int64_t sz, int64_t sy,
                         double* out) {
  // f rows: [0, nz) gz, [nz, 2 nz) dz, then gy, dy (ny each), then gx, dx (n each)
  const double(*gz)[kFusedRank] = f;
  const double(*dz)[kFusedRank] = f + nz;
  const double(*gy)[kFusedRank] = f + 2 * nz;
  const double(*dy)[kFusedRank] = f + 2 * nz + ny;
  const double(*gx)[kFusedRank] = f + 2 * nz + 2 * ny;
  const double(*dx)[kFusedRank] = f + 2 * nz + 2 * ny + n;
  // the x factors copied to a local array of rows of RP: the float64 gather measured 4x faster
  // (embryo, 0.45 M points, 1 thread: backward 3.44 -> 0.88 s CPU) than read in place from f;
  // float32 unchanged (0.85-0.90 s)
  alignas(64) double gxT[kMaxWindow][RP], dxT[kMaxWindow][RP];
  for (int tx = 0; tx < n; ++tx)
    for (int r = 0; r < RP; ++r) {
      gxT[tx][r] = gx[tx][r];
      dxT[tx][r] = dx[tx][r];
    }
  double val[RP] = {}, ddz[RP] = {}, ddy[RP] = {}, ddx[RP] = {};
  for (int tz = 0; tz < nz; ++tz) {
    double a0[RP] = {}, ady[RP] = {}, a1[RP] = {};
    const T* plane = base + tz * sz;
    for (int ty = 0; ty < ny; ++ty) {
      const T* row = plane + ty * sy;
      double x0[RP] = {}, x1[RP] = {};
      for (int tx = 0; tx < n; ++tx) {
        const double v = static_cast<double>(row[tx]);
        for (int r = 0; r < RP; ++r) {
          x0[r] += gxT[tx][r] * v;
          x1[r] += dxT[tx][r] * v;
        }
      }
      for (int r = 0; r < RP; ++r) {
        a0[r] += gy[ty][r] * x0[r];
        ady[r] += dy[ty][r] * x0[r];
        a1[r] += gy[ty][r] * x1[r];
      }
    }
    for (int r = 0; r < RP; ++r) {
      val[r] += gz[tz][r] * a0[r];
      ddz[r] += dz[tz][r] * a0[r];
      ddy[r] += gz[tz][r] * ady[r];
      ddx[r] += gz[tz][r] * a1[r];
    }
  }
  double o[4] = {0, 0, 0, 0};
  for (int r = 0; r < RP; ++r) {
    o[0] += val[r];
    o[1] += ddz[r];
    o[2] += ddy[r];
    o[3] += ddx[r];
  }
  for (int k = 0; k < 4; ++k) out[k] = o[k];
}

template <typename T>
inline void table_gather_point_fused(const Setup& S, const TableSetup& TS, const double* const* g,
                                     const double* const* dg, const double* d0, int l, const int* clo,
                                     const int* chi, const T* base, int64_t sz, int64_t sy, double* out) {
  const int W[3] = {static_cast<int>(S.ax[0].W), static_cast<int>(S.ax[1].W), static_cast<int>(S.ax[2].W)};
  const int R = static_cast<int>(TS.rank);
  int lo[3] = {kMaxWindow, kMaxWindow, kMaxWindow}, hi[3] = {0, 0, 0};
  for (int r = 0; r < R; ++r) {
    int tl[3], th[3];
    bool empty = false;
    for (int a = 0; a < 3; ++a) {
      term_range(S.ax[a], TS.t[a].reach[r], d0[a * kLanes + l], clo[a], chi[a], tl[a], th[a]);
      empty |= tl[a] >= th[a];
    }
    if (empty) continue;
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], tl[a]);
      hi[a] = std::max(hi[a], th[a]);
    }
  }
  out[0] = out[1] = out[2] = out[3] = 0.0;
  if (lo[0] >= hi[0] || lo[1] >= hi[1] || lo[2] >= hi[2]) return;
  const int RP = (R + 3) / 4 * 4;
  const int nz = hi[0] - lo[0], ny = hi[1] - lo[1], n = hi[2] - lo[2];
  alignas(64) double f[6 * kMaxWindow][kFusedRank];
  double(*p)[kFusedRank] = f;
  const int cnt[3] = {nz, ny, n};
  for (int a = 0; a < 3; ++a) {
    for (int k = 0; k < 2; ++k) {
      const double* src = k == 0 ? g[a] : dg[a];
      for (int t = 0; t < cnt[a]; ++t) {
        for (int r = 0; r < R; ++r) p[t][r] = src[(r * W[a] + lo[a] + t) * kLanes + l];
        for (int r = R; r < RP; ++r) p[t][r] = 0.0;
      }
      p += cnt[a];
    }
  }
  const T* b = base + lo[0] * sz + lo[1] * sy + lo[2];
  switch (RP) {
    case 4: gather_fused<T, 4>(f, nz, ny, n, b, sz, sy, out); break;
    case 8: gather_fused<T, 8>(f, nz, ny, n, b, sz, sy, out); break;
    case 12: gather_fused<T, 12>(f, nz, ny, n, b, sz, sy, out); break;
    default: gather_fused<T, 16>(f, nz, ny, n, b, sz, sy, out);
  }
}

template <typename T>
void table_backward_faces(const Setup& S, const TableSetup& TS, const T* tri, const T* strength,
                          const int64_t* face_rule, const int64_t* rule_start, const double* lam, const double* rw,
                          const T* grad, int64_t f0, int64_t f1, T* gtri, T* gstr) {
  TableScratch sc(S, TS, true);
  const bool fused = TS.rank <= kFusedRank;
  alignas(64) double y[3][kLanes], fl[3][kLanes];
  const int64_t zero[3] = {0, 0, 0};
  const int64_t full[3] = {S.ax[0].n, S.ax[1].n, S.ax[2].n};
  const int64_t sz = S.Y * S.X, sy = S.X;
  for (int64_t f = f0; f < f1; ++f) {
    const T* c = tri + 9 * f;
    const double sf = static_cast<double>(strength[f]);
    const int64_t r = face_rule[f];
    const int64_t q1 = rule_start[r + 1];
    double gc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    double gs = 0.0;
    for (int64_t qb = rule_start[r]; qb < q1; qb += kLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kLanes, q1 - qb));
      block_points<T>(c, lam, qb, n, y);
      for (int a = 0; a < 3; ++a)
        table_axis_block<true>(S.ax[a], TS.t[a], TS.rank, y[a], fl[a], sc.d0 + a * kLanes, sc.g[a], sc.dg[a]);
      for (int l = 0; l < n; ++l) {
        const int64_t i0[3] = {static_cast<int64_t>(fl[0][l]), static_cast<int64_t>(fl[1][l]),
                               static_cast<int64_t>(fl[2][l])};
        int lo[3], hi[3];
        if (!clip_box(S, i0, zero, full, lo, hi)) continue;
        const T* base = grad + i0[0] * sz + i0[1] * sy + i0[2];
        double o[4];
        if (fused)
          table_gather_point_fused<T>(S, TS, sc.g, sc.dg, sc.d0, l, lo, hi, base, sz, sy, o);
        else
          table_gather_point<T>(S, TS, sc.g, sc.dg, sc.d0, l, lo, hi, base, sz, sy, o);
        const int64_t q = qb + l;
        const double l0 = lam[3 * q], l1 = lam[3 * q + 1], l2 = lam[3 * q + 2];
        const double s = sf * rw[q];
        const double pz = -s * o[1], py = -s * o[2], px = -s * o[3];  // d/dy = -d/dd
        gc[0] += l0 * pz;
        gc[1] += l0 * py;
        gc[2] += l0 * px;
        gc[3] += l1 * pz;
        gc[4] += l1 * py;
        gc[5] += l1 * px;
        gc[6] += l2 * pz;
        gc[7] += l2 * py;
        gc[8] += l2 * px;
        gs += rw[q] * o[0];
      }
    }
    for (int k = 0; k < 9; ++k) gtri[9 * f + k] = static_cast<T>(gc[k]);
    gstr[f] = static_cast<T>(gs);
  }
}
