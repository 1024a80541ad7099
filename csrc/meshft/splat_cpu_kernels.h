// Per-face loops of the real-space splat (splat_cpu.cpp). Included twice, into an AVX2+FMA
// namespace and a baseline one (the same scheme as meshft_cpu_kernels.h); needs Axis, Setup
// and kMaxWindow from the including file. No includes here.
//
// A face's quadrature points are processed in blocks of kLanes: their positions and the
// per-axis window factors are computed lane-wise in straight-line loops the compiler
// vectorises (the exponentials by exp_lane, a polynomial with no call and no branch); then
// each point's window is scattered (forward) or gathered (backward) on its own, clipped at the
// image border.

constexpr int kLanes = 8;

// exp(x) for x in [-708, 709] (clamped), a few ulp: x = n ln2 + r, |r| <= ln2 / 2, the degree-13
// Taylor polynomial of e^r (truncation < 1e-17 relative) times 2^n built in the exponent bits.
inline double exp_lane(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double shift = 6755399441055744.0;  // 1.5 * 2^52: rounds x log2(e) to an integer
  double kd = x * 1.4426950408889634 + shift;
  uint64_t ki;
  std::memcpy(&ki, &kd, sizeof ki);
  kd -= shift;
  const double r = (x - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const uint64_t sb = (ki + 1023) << 52;  // the low bits of ki hold n (two's complement)
  double s;
  std::memcpy(&s, &sb, sizeof s);
  return p * s;
}

// Window factors of one axis for kLanes coordinates y: first voxel (as a double) fl and, for
// t < W, g[t * kLanes + l] (and dg/dd, dg/dsigma when asked), unclipped.
template <bool Deriv, bool Sig>
inline void axis_block(const Axis& A, const double* y, double* fl, double* g, double* dg, double* sg) {
  alignas(64) double d[kLanes], e[kLanes], rho[kLanes];
  for (int l = 0; l < kLanes; ++l) fl[l] = std::floor((y[l] - A.o - A.R) / A.h) + 1.0;
  // B > 1 (a block-averaged PSF): the mean of B Gaussian factors, the m-th displaced by c_m
  // (1/B is in cn and cut); m = 0 writes, the others add
  for (int64_t m = 0; m < A.B; ++m) {
    const double c = (static_cast<double>(m) - 0.5 * static_cast<double>(A.B - 1)) * A.b;
    for (int l = 0; l < kLanes; ++l) {
      const double d0 = fl[l] * A.h + A.o - y[l] + c;
      d[l] = d0;
      e[l] = exp_lane(-d0 * d0 * A.inv2s2);
      rho[l] = exp_lane(-(2.0 * d0 * A.h + A.h * A.h) * A.inv2s2);
    }
    const bool first = m == 0;  // (the buffers hold garbage before: select, never multiply)
    for (int t = 0; t < A.W; ++t) {
      double* gt = g + t * kLanes;
      double* dgt = Deriv ? dg + t * kLanes : nullptr;
      double* sgt = Sig ? sg + t * kLanes : nullptr;
      for (int l = 0; l < kLanes; ++l) {
        const double dd = d[l];
        const bool in = std::fabs(dd) <= A.r;
        const double G = A.cn * e[l];  // normalised Gaussian / (n(c) B)
        gt[l] = (first ? 0.0 : gt[l]) + (in ? G - A.cut : 0.0);
        if (Deriv) dgt[l] = (first ? 0.0 : dgt[l]) + (in ? -G * dd * A.inv_s2 : 0.0);
        if (Sig) sgt[l] = (first ? 0.0 : sgt[l]) + (in ? (G * (dd * dd * A.inv_s2 - 1.0) + A.cut) / A.sigma : 0.0);
        e[l] *= rho[l];
        rho[l] *= A.qq;
        d[l] = dd + A.h;
      }
    }
  }
}

// Positions of the points [qb, qb + n) of a face (lanes past n repeat the last point).
template <typename T>
inline void block_points(const T* c, const double* lam, int64_t qb, int n, double (*y)[kLanes]) {
  for (int l = 0; l < kLanes; ++l) {
    const int64_t q = qb + (l < n ? l : n - 1);
    const double l0 = lam[3 * q], l1 = lam[3 * q + 1], l2 = lam[3 * q + 2];
    y[0][l] = l0 * c[0] + l1 * c[3] + l2 * c[6];
    y[1][l] = l0 * c[1] + l1 * c[4] + l2 * c[7];
    y[2][l] = l0 * c[2] + l1 * c[5] + l2 * c[8];
  }
}

// Voxel box [lo, hi) of axis A covering the windows of every point of a face whose coordinate
// lies in [ymin, ymax] (one voxel of slack for rounding), clipped to the image.
inline void face_box(const Axis& A, double ymin, double ymax, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor((ymin - A.o - A.R) / A.h)));
  hi = std::min<int64_t>(A.n, static_cast<int64_t>(std::floor((ymax - A.o - A.R) / A.h)) + 2 + A.W);
}

constexpr int kCopies = 4;             // interleaved accumulators of a face's patch
constexpr int64_t kMaxPatch = 1 << 14;  // voxels per copy (64 KB in float); larger faces go direct

// One point's window (clipped range lo..hi per axis) added at base (strides sz, sy); WX > 0: the
// x range is the whole window of WX voxels (a constant: the row loop unrolls).
template <typename T, int WX>
inline void scatter_point(const double (*g)[kMaxWindow * kLanes], int l, double s, const int* lo, const int* hi,
                          T* base, int64_t sz, int64_t sy) {
  T gx[kMaxWindow], gy[kMaxWindow];
  const int xl = WX > 0 ? 0 : lo[2], xh = WX > 0 ? WX : hi[2];
  for (int t = xl; t < xh; ++t) gx[t] = static_cast<T>(g[2][t * kLanes + l]);
  for (int t = lo[1]; t < hi[1]; ++t) gy[t] = static_cast<T>(g[1][t * kLanes + l]);
  for (int tz = lo[0]; tz < hi[0]; ++tz) {
    const T az = static_cast<T>(s * g[0][tz * kLanes + l]);
    if (az == T(0)) continue;
    T* plane = base + tz * sz;
    for (int ty = lo[1]; ty < hi[1]; ++ty) {
      const T a = az * gy[ty];
      T* row = plane + ty * sy;
      for (int tx = xl; tx < xh; ++tx) row[tx] += a * gx[tx];
    }
  }
}

// Clipped window ranges of the point with first voxels i0 against the box [b, e); false if empty.
inline bool clip_box(const Setup& S, const int64_t* i0, const int64_t* b, const int64_t* e, int* lo, int* hi) {
  bool empty = false;
  for (int a = 0; a < 3; ++a) {
    lo[a] = static_cast<int>(std::max<int64_t>(0, b[a] - i0[a]));
    hi[a] = static_cast<int>(std::min<int64_t>(S.ax[a].W, e[a] - i0[a]));
    empty |= lo[a] >= hi[a];
  }
  return !empty;
}

// Splat of points [qb, qb + n) into dst (a box of strides sz, sy whose first voxel is b in the
// image, ending at e): point l into copy (l % copies), copies cs apart.
template <typename T>
inline void scatter_block(const Setup& S, const double (*fl)[kLanes], const double (*g)[kMaxWindow * kLanes],
                          double sf, const double* rw, int64_t qb, int n, T* dst, int64_t sz, int64_t sy,
                          const int64_t* b, const int64_t* e, int copies, int64_t cs) {
  const int W = S.ax[2].W;
  for (int l = 0; l < n; ++l) {
    const int64_t i0[3] = {static_cast<int64_t>(fl[0][l]), static_cast<int64_t>(fl[1][l]),
                           static_cast<int64_t>(fl[2][l])};
    int lo[3], hi[3];
    if (!clip_box(S, i0, b, e, lo, hi)) continue;
    const double s = sf * rw[qb + l];
    T* base = dst + (l % copies) * cs + (i0[0] - b[0]) * sz + (i0[1] - b[1]) * sy + (i0[2] - b[2]);
    const int wx = (lo[2] == 0 && hi[2] == W) ? W : 0;
    switch (wx) {
      case 2: scatter_point<T, 2>(g, l, s, lo, hi, base, sz, sy); break;
      case 3: scatter_point<T, 3>(g, l, s, lo, hi, base, sz, sy); break;
      case 4: scatter_point<T, 4>(g, l, s, lo, hi, base, sz, sy); break;
      case 5: scatter_point<T, 5>(g, l, s, lo, hi, base, sz, sy); break;
      case 6: scatter_point<T, 6>(g, l, s, lo, hi, base, sz, sy); break;
      case 7: scatter_point<T, 7>(g, l, s, lo, hi, base, sz, sy); break;
      default: scatter_point<T, 0>(g, l, s, lo, hi, base, sz, sy);
    }
  }
}

// Each face's points are splatted into kCopies interleaved copies of a small patch (the box of
// their windows; consecutive points hit the same voxels, and one accumulator would chain every
// update on the previous store), which are then added to the image.
template <typename T>
void forward_faces(const Setup& S, const T* tri, const T* strength, const int64_t* face_rule,
                   const int64_t* rule_start, const double* lam, const double* rw, int64_t f0,
                   int64_t f1, T* img) {
  alignas(64) double g[3][kMaxWindow * kLanes];
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
    if (ez <= 0 || ey <= 0 || ex <= 0) continue;  // every window misses the image
    const int64_t cs = ez * ey * ex;
    const bool local = cs <= kMaxPatch;
    if (local) {
      if (static_cast<int64_t>(patch.size()) < kCopies * cs) patch.resize(kCopies * cs);
      std::fill(patch.begin(), patch.begin() + kCopies * cs, T(0));
    }
    for (int64_t qb = q0; qb < q1; qb += kLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kLanes, q1 - qb));
      block_points<T>(c, lam, qb, n, y);
      for (int a = 0; a < 3; ++a) axis_block<false, false>(S.ax[a], y[a], fl[a], g[a], nullptr, nullptr);
      if (local)
        scatter_block<T>(S, fl, g, sf, rw, qb, n, patch.data(), ey * ex, ex, b, e, kCopies, cs);
      else
        scatter_block<T>(S, fl, g, sf, rw, qb, n, img, S.Y * S.X, S.X, zero, full, 1, 0);
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

// Sums of one point: val = <grad, g>, dd = <grad, d g / d d_a> per axis, vs = <grad, d g / d sigma_a>
// (Sig), over the clipped window lo..hi at base (strides sz, sy); WX > 0 as in scatter_point.
template <typename T, bool Sig, int WX>
inline void gather_point(const double (*g)[kMaxWindow * kLanes], const double (*dg)[kMaxWindow * kLanes],
                         const double (*sg)[kMaxWindow * kLanes], int l, const int* lo, const int* hi,
                         const T* base, int64_t sz, int64_t sy, double* out) {
  double gx[kMaxWindow], dx[kMaxWindow], sx[kMaxWindow];
  const int xl = WX > 0 ? 0 : lo[2], xh = WX > 0 ? WX : hi[2];
  for (int t = xl; t < xh; ++t) {
    gx[t] = g[2][t * kLanes + l];
    dx[t] = dg[2][t * kLanes + l];
    if (Sig) sx[t] = sg[2][t * kLanes + l];
  }
  double val = 0, ddz = 0, ddy = 0, ddx = 0, vsz = 0, vsy = 0, vsx = 0;
  for (int tz = lo[0]; tz < hi[0]; ++tz) {
    double a0 = 0, ady = 0, a1 = 0, a2 = 0, asy = 0;
    const T* plane = base + tz * sz;
    for (int ty = lo[1]; ty < hi[1]; ++ty) {
      const T* row = plane + ty * sy;
      double x0 = 0, x1 = 0, x2 = 0;
      for (int tx = xl; tx < xh; ++tx) {
        const double v = static_cast<double>(row[tx]);
        x0 += gx[tx] * v;
        x1 += dx[tx] * v;
        if (Sig) x2 += sx[tx] * v;
      }
      const double gyv = g[1][ty * kLanes + l];
      a0 += gyv * x0;
      ady += dg[1][ty * kLanes + l] * x0;
      a1 += gyv * x1;
      if (Sig) {
        a2 += gyv * x2;
        asy += sg[1][ty * kLanes + l] * x0;
      }
    }
    const double gzv = g[0][tz * kLanes + l];
    val += gzv * a0;
    ddz += dg[0][tz * kLanes + l] * a0;
    ddy += gzv * ady;
    ddx += gzv * a1;
    if (Sig) {
      vsz += sg[0][tz * kLanes + l] * a0;
      vsy += gzv * asy;
      vsx += gzv * a2;
    }
  }
  out[0] = val;
  out[1] = ddz;
  out[2] = ddy;
  out[3] = ddx;
  out[4] = vsz;
  out[5] = vsy;
  out[6] = vsx;
}

template <typename T, bool Sig>
void backward_faces(const Setup& S, const T* tri, const T* strength, const int64_t* face_rule,
                    const int64_t* rule_start, const double* lam, const double* rw, const T* grad,
                    int64_t f0, int64_t f1, T* gtri, T* gstr, double* gsig) {
  alignas(64) double g[3][kMaxWindow * kLanes], dg[3][kMaxWindow * kLanes];
  alignas(64) double sg[3][kMaxWindow * kLanes];
  alignas(64) double y[3][kLanes], fl[3][kLanes];
  const int64_t zero[3] = {0, 0, 0};
  const int64_t full[3] = {S.ax[0].n, S.ax[1].n, S.ax[2].n};
  const int W = S.ax[2].W;
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
      for (int a = 0; a < 3; ++a) axis_block<true, Sig>(S.ax[a], y[a], fl[a], g[a], dg[a], Sig ? sg[a] : nullptr);
      for (int l = 0; l < n; ++l) {
        const int64_t i0[3] = {static_cast<int64_t>(fl[0][l]), static_cast<int64_t>(fl[1][l]),
                               static_cast<int64_t>(fl[2][l])};
        int lo[3], hi[3];
        if (!clip_box(S, i0, zero, full, lo, hi)) continue;
        const T* base = grad + i0[0] * sz + i0[1] * sy + i0[2];
        double o[7];
        const int wx = (lo[2] == 0 && hi[2] == W) ? W : 0;
        switch (wx) {
          case 2: gather_point<T, Sig, 2>(g, dg, sg, l, lo, hi, base, sz, sy, o); break;
          case 3: gather_point<T, Sig, 3>(g, dg, sg, l, lo, hi, base, sz, sy, o); break;
          case 4: gather_point<T, Sig, 4>(g, dg, sg, l, lo, hi, base, sz, sy, o); break;
          case 5: gather_point<T, Sig, 5>(g, dg, sg, l, lo, hi, base, sz, sy, o); break;
          case 6: gather_point<T, Sig, 6>(g, dg, sg, l, lo, hi, base, sz, sy, o); break;
          case 7: gather_point<T, Sig, 7>(g, dg, sg, l, lo, hi, base, sz, sy, o); break;
          default: gather_point<T, Sig, 0>(g, dg, sg, l, lo, hi, base, sz, sy, o);
        }
        const int64_t q = qb + l;
        const double l0 = lam[3 * q], l1 = lam[3 * q + 1], l2 = lam[3 * q + 2];
        const double s = sf * rw[q];
        // d = x_voxel - y: d/dy = -d/dd
        const double pz = -s * o[1], py = -s * o[2], px = -s * o[3];
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
        if (Sig) {
          gsig[0] += s * o[4];
          gsig[1] += s * o[5];
          gsig[2] += s * o[6];
        }
      }
    }
    for (int k = 0; k < 9; ++k) gtri[9 * f + k] = static_cast<T>(gc[k]);
    gstr[f] = static_cast<T>(gs);
  }
}
