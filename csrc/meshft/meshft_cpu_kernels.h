// Loops of the CPU kernels. Deliberately WITHOUT an include guard and without includes:
// meshft_cpu.cpp includes this file twice, into namespaces compiled for AVX2 and for the
// baseline x86-64 ISA, and picks one at run time. The arithmetic is identical in both (no
// FP contraction under -std=c++17, no reassociation), so the results do not depend on it.

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr int64_t kTile = 32;  // frequencies per tile (lanes)

// Per-face geometry in double: corner indices, twice the area, and the area gradients.
struct FaceGeom {
  int64_t a, b, c;
  double two_area;
  double ga[3], gb[3], gc[3];  // gradients of A (not 2A) w.r.t. each corner
};

template <typename T>
std::vector<FaceGeom> face_geometry(const T* verts, const int64_t* faces, int64_t F) {
  std::vector<FaceGeom> geom(static_cast<size_t>(F));
  at::parallel_for(0, F, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      FaceGeom& g = geom[t];
      g.a = faces[3 * t];
      g.b = faces[3 * t + 1];
      g.c = faces[3 * t + 2];
      const double a[3] = {double(verts[3 * g.a]), double(verts[3 * g.a + 1]),
                           double(verts[3 * g.a + 2])};
      const double b[3] = {double(verts[3 * g.b]), double(verts[3 * g.b + 1]),
                           double(verts[3 * g.b + 2])};
      const double c[3] = {double(verts[3 * g.c]), double(verts[3 * g.c + 1]),
                           double(verts[3 * g.c + 2])};
      area_grad(a, b, c, g.two_area, g.ga, g.gb, g.gc);
    }
  });
  return geom;
}

// Per-vertex tables of n_sub frequency tiles: for each tile, vertex-major rows of kTile lanes,
// structure of arrays.
template <typename T>
struct TileTables {
  int64_t V;
  std::vector<double> phi;       // 2 pi k.v
  std::vector<double> ere, eim;  // exp(-i phi), in double whatever T: see fill_tables
  TileTables(int64_t V_, int64_t n_sub)
      : V(V_),
        phi(static_cast<size_t>(n_sub * V_ * kTile)),
        ere(static_cast<size_t>(n_sub * V_ * kTile)),
        eim(static_cast<size_t>(n_sub * V_ * kTile)) {}
};

template <typename T>
struct TileView {
  double* phi;
  double* ere;
  double* eim;
};

template <typename T>
inline TileView<T> view(TileTables<T>& tab, int64_t sub) {
  const int64_t off = sub * tab.V * kTile;
  return {tab.phi.data() + off, tab.ere.data() + off, tab.eim.data() + off};
}

// 2 pi k of one tile in double, structure of arrays (lanes past kn: k = 0).
struct TileFreqs {
  double x[kTile], y[kTile], z[kTile];
};

template <typename T>
inline void tile_freqs(const T* freqs, int64_t k0, int64_t kn, TileFreqs& tf) {
  for (int64_t j = 0; j < kTile; ++j) {
    const bool in = j < kn;
    tf.x[j] = in ? kTwoPi * double(freqs[3 * (k0 + j)]) : 0.0;
    tf.y[j] = in ? kTwoPi * double(freqs[3 * (k0 + j) + 1]) : 0.0;
    tf.z[j] = in ? kTwoPi * double(freqs[3 * (k0 + j) + 2]) : 0.0;
  }
}

// The exponentials are kept in double even for T = float: the float accuracy contract
// (3e-7 |U(0)|, about 2.5 float ulp of f(0) = 1/2) cannot afford a rounded exp(-i pa) times a
// rounded series times a float complex product, nor the recursive divided differences of the
// large-spread lanes in float (they divide differences of rounded exponentials by the spread,
// which amplified the rounding to 3e-7 |U(0)| at spreads just above the series switch).
// For float the branch-free double polynomial (vectorises); for double the libm functions.
template <typename T>
inline Cplx<double> expmi_table(double ph) {
  return expmi_poly(ph);
}
template <>
inline Cplx<double> expmi_table<double>(double ph) {
  return expmi<double>(ph);
}

// Fill the tables of one tile for vertices [v0, v1) (a vectorised loop over the lanes).
template <typename T>
inline void fill_tables(const T* verts, const TileFreqs& tf, int64_t v0, int64_t v1,
                        TileView<T> tab) {
  for (int64_t v = v0; v < v1; ++v) {
    const double x = verts[3 * v], y = verts[3 * v + 1], z = verts[3 * v + 2];
    double* __restrict__ prow = tab.phi + v * kTile;
    double* __restrict__ rrow = tab.ere + v * kTile;
    double* __restrict__ irow = tab.eim + v * kTile;
    for (int64_t j = 0; j < kTile; ++j) {
      const double ph = tf.x[j] * x + tf.y[j] * y + tf.z[j] * z;
      const Cplx<double> e = expmi_table<T>(ph);
      prow[j] = ph;
      rrow[j] = e.re;
      irow[j] = e.im;
    }
  }
}

// Fixed-order sum of one tile of lanes: kTile / 8 terms per lane in T, then 8 in double.
template <typename T>
inline double lane_sum(const T* v) {
  static_assert(kTile % 8 == 0, "kTile must be a multiple of 8");
  T t[8];
  for (int l = 0; l < 8; ++l) t[l] = v[l];
  for (int64_t j0 = 8; j0 < kTile; j0 += 8)
    for (int l = 0; l < 8; ++l) t[l] += v[j0 + l];
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += double(t[l]);
  return s;
}

// Values of one face over a full tile of frequencies, in three passes: (1) relative phases and
// the series for every lane, straight-line code that the compiler vectorises across lanes;
// (2) the lanes whose phase spread is too large for the series are recomputed one by one with
// the recursive divided differences (rare for small triangles and low frequencies);
// (3) the caller consumes the lanes, again vectorised.
template <typename T>
struct FaceLanes {
  T p[kTile], q[kTile];
  T f0r[kTile], f0i[kTile];
  double ur[kTile], ui[kTile];  // forward: f[pa, pb, pc] with its absolute phase, in double
  T far_[kTile], fai[kTile], fbr[kTile], fbi[kTile];
};

// f[0, x1, x2] times exp(-i pa) for a large spread, in double for every T (see expmi_table),
// the recursion of dd2 written without branches so that the loop over the lanes vectorises
// (on a typical mesh at |k| of a few cycles/um most lanes take this path): the closest pair
// (u, v) and the far node w are picked by selects, and both forms of each first difference
// are computed and one kept (the discarded one may be inf/nan: harmless, it is not used).
// For T = float the pair series keeps the float length (truncation 2e-9 relative).
template <typename T>
inline Cplx<double> pair_dd(double x, Cplx<double> Ex, double y, Cplx<double> Ey) {
  const double d = y - x;
  const Cplx<double> ser = cmul(Ex, pair_series<double, Tuning<T>::kPairTerms>(d));
  const double inv = 1.0 / d;
  const Cplx<double> quo = {(Ex.re - Ey.re) * inv, (Ex.im - Ey.im) * inv};
  const bool near = tabs(d) < Tuning<T>::pair();
  return {near ? ser.re : quo.re, near ? ser.im : quo.im};
}

template <typename T>
inline Cplx<double> dd2_lanes(double x1, double x2, Cplx<double> E0, Cplx<double> E1,
                              Cplx<double> E2) {
  const double d01 = tabs(x1), d02 = tabs(x2), d12 = tabs(x2 - x1);
  // bitwise & | (not && ||): short-circuit operators are control flow, which stops the
  // vectoriser
  const bool ca = (d01 <= d02) & (d01 <= d12);  // (0, 1) closest
  const bool cb = (!ca) & (d02 <= d12);          // (0, 2) closest
  const bool u0 = ca | cb;
  // u = 0 unless (1, 2) is the closest pair; v = 1 if (0, 1), else 2; w the remaining node
  const double u = u0 ? 0.0 : x1;
  const Cplx<double> Eu = {u0 ? E0.re : E1.re, u0 ? E0.im : E1.im};
  const double v = ca ? x1 : x2;
  const Cplx<double> Ev = {ca ? E1.re : E2.re, ca ? E1.im : E2.im};
  const double w = ca ? x2 : (cb ? x1 : 0.0);
  const Cplx<double> Ew = {ca ? E2.re : (cb ? E1.re : E0.re), ca ? E2.im : (cb ? E1.im : E0.im)};
  const Cplx<double> fuv = pair_dd<T>(u, Eu, v, Ev);
  const Cplx<double> fvw = pair_dd<T>(v, Ev, w, Ew);
  const double inv = 1.0 / (u - w);
  return {(fuv.re - fvw.re) * inv, (fuv.im - fvw.im) * inv};
}

template <typename T>
inline void face_values(const TileView<T>& tab, int64_t a, int64_t b, int64_t c,
                        FaceLanes<T>& L) {
  const double* pa = tab.phi + a * kTile;
  const double* pb = tab.phi + b * kTile;
  const double* pc = tab.phi + c * kTile;
  const double* ar = tab.ere + a * kTile;
  const double* ai = tab.eim + a * kTile;
  int any_large = 0;
  for (int64_t j = 0; j < kTile; ++j) {
    const T p = T(pb[j] - pa[j]);
    const T q = T(pc[j] - pa[j]);
    L.p[j] = p;
    L.q[j] = q;
    any_large |= int(spread3(p, q) >= Tuning<T>::spread());
    const Cplx<T> s = tri_series(p, q);
    // the series is rounded once per term; the product with exp(-i pa) is formed in double
    L.ur[j] = ar[j] * double(s.re) - ai[j] * double(s.im);
    L.ui[j] = ar[j] * double(s.im) + ai[j] * double(s.re);
  }
  if (!any_large) return;
  const double* br = tab.ere + b * kTile;
  const double* bi = tab.eim + b * kTile;
  const double* cr = tab.ere + c * kTile;
  const double* ci = tab.eim + c * kTile;
  for (int64_t j = 0; j < kTile; ++j) {
    const Cplx<double> f = dd2_lanes<T>(pb[j] - pa[j], pc[j] - pa[j], {ar[j], ai[j]},
                                        {br[j], bi[j]}, {cr[j], ci[j]});
    const bool large = spread3(L.p[j], L.q[j]) >= Tuning<T>::spread();
    L.ur[j] = large ? f.re : L.ur[j];
    L.ui[j] = large ? f.im : L.ui[j];
  }
}

// Backward values of one face over a tile, RELATIVE to exp(-i pa) (the caller folds exp(-i pa)
// into conj(G) once per lane): F0 = f[0,p,q], Fa = f[0,0,p,q], Fb = f[p,p,0,q]; the third
// corner's value is -i F0 - Fa - Fb.
template <typename T>
inline void face_values_grad(const TileView<T>& tab, int64_t a, int64_t b, int64_t c,
                             FaceLanes<T>& L) {
  const double* pa = tab.phi + a * kTile;
  const double* pb = tab.phi + b * kTile;
  const double* pc = tab.phi + c * kTile;
  int any_large = 0;
  for (int64_t j = 0; j < kTile; ++j) {
    const T p = T(pb[j] - pa[j]);
    const T q = T(pc[j] - pa[j]);
    L.p[j] = p;
    L.q[j] = q;
    any_large |= int(spread3(p, q) >= Tuning<T>::spread());
    Cplx<T> s0, sa, sb;
    tri_series_grad_ab(p, q, s0, sa, sb);
    L.f0r[j] = s0.re;
    L.f0i[j] = s0.im;
    L.far_[j] = sa.re;
    L.fai[j] = sa.im;
    L.fbr[j] = sb.re;
    L.fbi[j] = sb.im;
  }
  if (!any_large) return;
  const double* ar = tab.ere + a * kTile;
  const double* ai = tab.eim + a * kTile;
  const double* br = tab.ere + b * kTile;
  const double* bi = tab.eim + b * kTile;
  const double* cr = tab.ere + c * kTile;
  const double* ci = tab.eim + c * kTile;
  for (int64_t j = 0; j < kTile; ++j) {
    if (spread3(L.p[j], L.q[j]) < Tuning<T>::spread()) continue;
    // exponentials relative to corner a: exp(-i p) = Eb conj(Ea), exp(-i q) = Ec conj(Ea)
    const Cplx<double> ea_conj = {ar[j], -ai[j]};
    const Cplx<double> eb = cmul(Cplx<double>{br[j], bi[j]}, ea_conj);
    const Cplx<double> ec = cmul(Cplx<double>{cr[j], ci[j]}, ea_conj);
    const Cplx<T> one = {T(1), T(0)};
    Cplx<T> f0, fa, fb, fc;
    tri_f_grad<T>(L.p[j], L.q[j], one, Cplx<T>{T(eb.re), T(eb.im)}, Cplx<T>{T(ec.re), T(ec.im)},
                  f0, fa, fb, fc);
    L.f0r[j] = f0.re;
    L.f0i[j] = f0.im;
    L.far_[j] = fa.re;
    L.fai[j] = fa.im;
    L.fbr[j] = fb.re;
    L.fbi[j] = fb.im;
  }
}

template <typename T>
void forward_kernel(const T* verts, const int64_t* faces, const T* weights, const T* freqs,
                    int64_t V, int64_t F, int64_t K, c10::complex<T>* out) {
  const std::vector<FaceGeom> geom = face_geometry(verts, faces, F);
  // w * 2A per face; faces that contribute nothing are dropped from the hot loop.
  std::vector<int64_t> live;
  std::vector<double> w2a;
  live.reserve(F);
  w2a.reserve(F);
  for (int64_t t = 0; t < F; ++t) {
    const double s = double(weights[t]) * geom[t].two_area;
    if (s != 0.0) {
      live.push_back(t);
      w2a.push_back(s);
    }
  }
  const int64_t n_live = static_cast<int64_t>(live.size());
  const int64_t n_tiles = (K + kTile - 1) / kTile;
  const int nt = std::max(1, std::min<int>(at::get_num_threads(), int(n_tiles)));

#pragma omp parallel num_threads(nt)
  {
    TileTables<T> tables(V, 1);
    const TileView<T> tab = view(tables, 0);
    FaceLanes<T> L;
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int64_t k0 = tile * kTile;
      const int64_t kn = std::min(kTile, K - k0);
      TileFreqs tf;
      tile_freqs(freqs, k0, kn, tf);
      fill_tables(verts, tf, 0, V, tab);
      double acc_re[kTile], acc_im[kTile];
      for (int64_t j = 0; j < kTile; ++j) acc_re[j] = acc_im[j] = 0.0;
      for (int64_t i = 0; i < n_live; ++i) {
        const FaceGeom& g = geom[live[i]];
        face_values(tab, g.a, g.b, g.c, L);
        const double s = w2a[i];
        for (int64_t j = 0; j < kTile; ++j) {
          acc_re[j] += s * L.ur[j];
          acc_im[j] += s * L.ui[j];
        }
      }
      for (int64_t j = 0; j < kn; ++j) out[k0 + j] = c10::complex<T>(T(acc_re[j]), T(acc_im[j]));
    }
  }
}

// Per-face frequency sums of the backward pass.
struct FaceAcc {
  double r;         // sum_k Re(conj(G) f[pa, pb, pc])
  double va[3];     // sum_k Re(conj(G) f[pa, pa, pb, pc]) k
  double vb[3];
  double vc[3];
};

template <typename T>
void backward_kernel(const T* verts, const int64_t* faces, const T* weights, const T* freqs,
                     const c10::complex<T>* grad_out, int64_t V, int64_t F, int64_t K,
                     T* grad_verts, T* grad_weights) {
  const std::vector<FaceGeom> geom = face_geometry(verts, faces, F);
  std::vector<int64_t> live;  // non-degenerate faces; the others have exactly zero gradient
  live.reserve(F);
  for (int64_t t = 0; t < F; ++t) {
    if (geom[t].two_area > 0.0) live.push_back(t);
  }
  const int64_t n_live = static_cast<int64_t>(live.size());
  std::vector<FaceAcc> acc(static_cast<size_t>(n_live), FaceAcc{0.0, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}});
  // Each thread owns a contiguous range of faces and tabulates, kBlock tiles at a time, only
  // the vertices its faces use (rows of a private, globally indexed table). Threads never wait
  // for each other (barriers are costly on a busy machine), the vertices shared by two ranges
  // are tabulated twice (a few percent), and every face's sums are formed in the same order
  // whatever the number of threads.
  constexpr int64_t kBlockMax = 8;
  const int64_t n_tiles = (K + kTile - 1) / kTile;
  const int64_t row_bytes = kTile * int64_t(3 * sizeof(double));
  const int64_t kBlock = std::max<int64_t>(
      1, std::min<int64_t>({kBlockMax, n_tiles, (int64_t(16) << 20) / std::max<int64_t>(1, V * row_bytes)}));
  const int64_t n_blocks = (n_tiles + kBlock - 1) / kBlock;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_live / 64 + 1)));

#pragma omp parallel num_threads(nt)
  {
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t i_begin = n_live * tid / nth, i_end = n_live * (tid + 1) / nth;
    std::vector<int64_t> my_verts;
    {
      std::vector<char> used(static_cast<size_t>(V), 0);
      for (int64_t i = i_begin; i < i_end; ++i) {
        const FaceGeom& g = geom[live[i]];
        used[g.a] = used[g.b] = used[g.c] = 1;
      }
      for (int64_t v = 0; v < V; ++v)
        if (used[v]) my_verts.push_back(v);
    }
    TileTables<T> tables(V, kBlock);
    FaceLanes<T> L;
    std::vector<T> kx(kBlock * kTile), ky(kBlock * kTile), kz(kBlock * kTile);
    std::vector<T> gr(kBlock * kTile), gi(kBlock * kTile);
    std::vector<TileFreqs> tf(static_cast<size_t>(kBlock));
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t t0 = blk * kBlock;
      const int64_t nsub = std::min(kBlock, n_tiles - t0);
      for (int64_t sub = 0; sub < nsub; ++sub) {
        const int64_t k0 = (t0 + sub) * kTile;
        tile_freqs(freqs, k0, std::min(kTile, K - k0), tf[sub]);
      }
      for (const int64_t v : my_verts) {
        for (int64_t sub = 0; sub < nsub; ++sub) fill_tables(verts, tf[sub], v, v + 1, view(tables, sub));
      }
      for (int64_t j = 0; j < nsub * kTile; ++j) {
        const int64_t k = t0 * kTile + j;
        const bool in = k < K;  // padding lanes get G = 0: they add nothing
        kx[j] = in ? freqs[3 * k] : T(0);
        ky[j] = in ? freqs[3 * k + 1] : T(0);
        kz[j] = in ? freqs[3 * k + 2] : T(0);
        gr[j] = in ? grad_out[k].real() : T(0);
        gi[j] = in ? grad_out[k].imag() : T(0);
      }
      for (int64_t i = i_begin; i < i_end; ++i) {
        const FaceGeom& g = geom[live[i]];
        double d[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t sub = 0; sub < nsub; ++sub) {
          face_values_grad(view(tables, sub), g.a, g.b, g.c, L);
          const TileView<T> tv = view(tables, sub);
          const double* AR = tv.ere + g.a * kTile;
          const double* AI = tv.eim + g.a * kTile;
          const T* KX = kx.data() + sub * kTile;
          const T* KY = ky.data() + sub * kTile;
          const T* KZ = kz.data() + sub * kTile;
          const T* GR = gr.data() + sub * kTile;
          const T* GI = gi.data() + sub * kTile;
          T w[10][kTile];
          for (int64_t j = 0; j < kTile; ++j) {
            // H = conj(G) exp(-i pa); Re(conj(G) exp(-i pa) F) = Re(H F)
            const T ar = T(AR[j]), ai = T(AI[j]);
            const T hr = GR[j] * ar + GI[j] * ai;
            const T hi = GR[j] * ai - GI[j] * ar;
            const T g0 = hr * L.f0r[j] - hi * L.f0i[j];
            const T gA = hr * L.far_[j] - hi * L.fai[j];
            const T gB = hr * L.fbr[j] - hi * L.fbi[j];
            // third corner: Re(H (-i F0 - Fa - Fb)) = Im(H F0) - gA - gB
            const T gC = (hr * L.f0i[j] + hi * L.f0r[j]) - gA - gB;
            w[0][j] = g0;
            w[1][j] = gA * KX[j];
            w[2][j] = gA * KY[j];
            w[3][j] = gA * KZ[j];
            w[4][j] = gB * KX[j];
            w[5][j] = gB * KY[j];
            w[6][j] = gB * KZ[j];
            w[7][j] = gC * KX[j];
            w[8][j] = gC * KY[j];
            w[9][j] = gC * KZ[j];
          }
          for (int n = 0; n < 10; ++n) d[n] += lane_sum(w[n]);
        }
        FaceAcc& A = acc[i];
        A.r += d[0];
        for (int e = 0; e < 3; ++e) {
          A.va[e] += d[1 + e];
          A.vb[e] += d[4 + e];
          A.vc[e] += d[7 + e];
        }
      }
    }
  }

  // d(w 2A f)/da = w (2 grad_a A f + 2A f_a 2 pi k); Re(conj(G) .) summed over k.
  std::vector<double> gv(static_cast<size_t>(3 * V), 0.0);
  for (int64_t t = 0; t < F; ++t) grad_weights[t] = T(0);
  for (int64_t i = 0; i < n_live; ++i) {
    const int64_t t = live[i];
    const FaceGeom& g = geom[t];
    const FaceAcc& A = acc[i];
    const double w = double(weights[t]);
    grad_weights[t] = T(g.two_area * A.r);
    const double s_area = 2.0 * w * A.r;
    const double s_phase = w * g.two_area * kTwoPi;
    for (int d = 0; d < 3; ++d) {
      gv[3 * g.a + d] += s_area * g.ga[d] + s_phase * A.va[d];
      gv[3 * g.b + d] += s_area * g.gb[d] + s_phase * A.vb[d];
      gv[3 * g.c + d] += s_area * g.gc[d] + s_phase * A.vc[d];
    }
  }
  for (int64_t i = 0; i < 3 * V; ++i) grad_verts[i] = T(gv[i]);
}

