// CPU (OpenMP) kernels of the mesh Fourier transform. The per-element math is in
// meshft_math.h (shared with the CUDA kernels); this file only organises the loops.
//
// Both directions work on tiles of kTile frequencies ("lanes"). For a tile, the absolute phase
// phi_v = 2 pi k.v (double) and exp(-i phi_v) (compute precision T) of every vertex are
// tabulated once, vertex-major and as separate arrays, so that a face reads short contiguous
// rows. Relative phases p = phi_b - phi_a are formed in double and rounded to T, so their error
// is relative to p itself, not to the hundreds of radians of the absolute phases. Per face, the
// series is evaluated for all lanes in straight-line code the compiler vectorises; lanes whose
// phase spread needs the recursive formulas are redone one by one.
//
// forward : threads own tiles of frequencies (each with private tables) and loop over all
//           faces, accumulating U(k) in double. No reduction across threads.
// backward: tiles are processed one after the other; the table of a tile is built by all
//           threads together, then threads own faces and accumulate, per face, the frequency
//           sums R = sum_k Re(conj(G) f) and V_corner = sum_k Re(conj(G) f_corner) k (in T
//           within a tile, in double across tiles). Corner gradients are gathered to the
//           vertices serially (deterministic, no atomics). Results do not depend on the number
//           of threads.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/extension.h>  // pybind11::gil_scoped_release

#include <algorithm>
#include <cmath>
#include <vector>

#include "meshft.h"
#include "meshft_math.h"

namespace meshft {
namespace {

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
  std::vector<double> phi;  // 2 pi k.v
  std::vector<T> ere, eim;  // exp(-i phi)
  TileTables(int64_t V_, int64_t n_sub)
      : V(V_),
        phi(static_cast<size_t>(n_sub * V_ * kTile)),
        ere(static_cast<size_t>(n_sub * V_ * kTile)),
        eim(static_cast<size_t>(n_sub * V_ * kTile)) {}
};

template <typename T>
struct TileView {
  double* phi;
  T* ere;
  T* eim;
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

// Fill the tables of one tile for vertices [v0, v1) (a vectorised loop over the lanes).
template <typename T>
inline void fill_tables(const T* verts, const TileFreqs& tf, int64_t v0, int64_t v1,
                        TileView<T> tab) {
  for (int64_t v = v0; v < v1; ++v) {
    const double x = verts[3 * v], y = verts[3 * v + 1], z = verts[3 * v + 2];
    double* __restrict__ prow = tab.phi + v * kTile;
    T* __restrict__ rrow = tab.ere + v * kTile;
    T* __restrict__ irow = tab.eim + v * kTile;
    for (int64_t j = 0; j < kTile; ++j) {
      const double ph = tf.x[j] * x + tf.y[j] * y + tf.z[j] * z;
      const Cplx<T> e = expmi<T>(ph);
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
  T far_[kTile], fai[kTile], fbr[kTile], fbi[kTile], fcr[kTile], fci[kTile];
};

template <typename T>
inline void face_values(const TileView<T>& tab, int64_t a, int64_t b, int64_t c,
                        FaceLanes<T>& L) {
  const double* pa = tab.phi + a * kTile;
  const double* pb = tab.phi + b * kTile;
  const double* pc = tab.phi + c * kTile;
  const T* ar = tab.ere + a * kTile;
  const T* ai = tab.eim + a * kTile;
  int any_large = 0;
  for (int64_t j = 0; j < kTile; ++j) {
    const T p = T(pb[j] - pa[j]);
    const T q = T(pc[j] - pa[j]);
    L.p[j] = p;
    L.q[j] = q;
    any_large |= int(spread3(p, q) >= Tuning<T>::spread());
    const Cplx<T> s = tri_series(p, q);
    L.f0r[j] = ar[j] * s.re - ai[j] * s.im;
    L.f0i[j] = ar[j] * s.im + ai[j] * s.re;
  }
  if (!any_large) return;
  const T* br = tab.ere + b * kTile;
  const T* bi = tab.eim + b * kTile;
  const T* cr = tab.ere + c * kTile;
  const T* ci = tab.eim + c * kTile;
  for (int64_t j = 0; j < kTile; ++j) {
    if (spread3(L.p[j], L.q[j]) < Tuning<T>::spread()) continue;
    const Cplx<T> f = dd2<T>(T(0), {ar[j], ai[j]}, L.p[j], {br[j], bi[j]}, L.q[j], {cr[j], ci[j]});
    L.f0r[j] = f.re;
    L.f0i[j] = f.im;
  }
}

template <typename T>
inline void face_values_grad(const TileView<T>& tab, int64_t a, int64_t b, int64_t c,
                             FaceLanes<T>& L) {
  const double* pa = tab.phi + a * kTile;
  const double* pb = tab.phi + b * kTile;
  const double* pc = tab.phi + c * kTile;
  const T* ar = tab.ere + a * kTile;
  const T* ai = tab.eim + a * kTile;
  int any_large = 0;
  for (int64_t j = 0; j < kTile; ++j) {
    const T p = T(pb[j] - pa[j]);
    const T q = T(pc[j] - pa[j]);
    L.p[j] = p;
    L.q[j] = q;
    any_large |= int(spread3(p, q) >= Tuning<T>::spread());
    Cplx<T> s0, sa, sb, sc;
    tri_series_grad(p, q, s0, sa, sb, sc);
    const T er = ar[j], ei = ai[j];
    L.f0r[j] = er * s0.re - ei * s0.im;
    L.f0i[j] = er * s0.im + ei * s0.re;
    L.far_[j] = er * sa.re - ei * sa.im;
    L.fai[j] = er * sa.im + ei * sa.re;
    L.fbr[j] = er * sb.re - ei * sb.im;
    L.fbi[j] = er * sb.im + ei * sb.re;
    L.fcr[j] = er * sc.re - ei * sc.im;
    L.fci[j] = er * sc.im + ei * sc.re;
  }
  if (!any_large) return;
  const T* br = tab.ere + b * kTile;
  const T* bi = tab.eim + b * kTile;
  const T* cr = tab.ere + c * kTile;
  const T* ci = tab.eim + c * kTile;
  for (int64_t j = 0; j < kTile; ++j) {
    if (spread3(L.p[j], L.q[j]) < Tuning<T>::spread()) continue;
    Cplx<T> f0, fa, fb, fc;
    tri_f_grad<T>(L.p[j], L.q[j], {ar[j], ai[j]}, {br[j], bi[j]}, {cr[j], ci[j]}, f0, fa, fb, fc);
    L.f0r[j] = f0.re;
    L.f0i[j] = f0.im;
    L.far_[j] = fa.re;
    L.fai[j] = fa.im;
    L.fbr[j] = fb.re;
    L.fbi[j] = fb.im;
    L.fcr[j] = fc.re;
    L.fci[j] = fc.im;
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
          acc_re[j] += s * double(L.f0r[j]);
          acc_im[j] += s * double(L.f0i[j]);
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
  // Tables for kBlock tiles at a time: fewer barriers (they are expensive on a busy machine).
  constexpr int64_t kBlock = 8;
  const int64_t n_tiles = (K + kTile - 1) / kTile;
  const int64_t n_blocks = (n_tiles + kBlock - 1) / kBlock;
  TileTables<T> tables(V, std::min(kBlock, n_tiles));
  const int nt = std::max(1, at::get_num_threads());

#pragma omp parallel num_threads(nt)
  {
    FaceLanes<T> L;
    std::vector<T> kx(kBlock * kTile), ky(kBlock * kTile), kz(kBlock * kTile);
    std::vector<T> gr(kBlock * kTile), gi(kBlock * kTile);
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t t0 = blk * kBlock;
      const int64_t nsub = std::min(kBlock, n_tiles - t0);
      TileFreqs tf[kBlock];
      for (int64_t sub = 0; sub < nsub; ++sub) {
        const int64_t k0 = (t0 + sub) * kTile;
        tile_freqs(freqs, k0, std::min(kTile, K - k0), tf[sub]);
      }
#pragma omp for schedule(static)
      for (int64_t v = 0; v < V; ++v) {
        for (int64_t sub = 0; sub < nsub; ++sub) fill_tables(verts, tf[sub], v, v + 1, view(tables, sub));
      }
      // implicit barrier: the tables are complete
      for (int64_t j = 0; j < nsub * kTile; ++j) {
        const int64_t k = t0 * kTile + j;
        const bool in = k < K;  // padding lanes get G = 0: they add nothing
        kx[j] = in ? freqs[3 * k] : T(0);
        ky[j] = in ? freqs[3 * k + 1] : T(0);
        kz[j] = in ? freqs[3 * k + 2] : T(0);
        gr[j] = in ? grad_out[k].real() : T(0);
        gi[j] = in ? grad_out[k].imag() : T(0);
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n_live; ++i) {
        const FaceGeom& g = geom[live[i]];
        double d[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t sub = 0; sub < nsub; ++sub) {
          face_values_grad(view(tables, sub), g.a, g.b, g.c, L);
          const T* KX = kx.data() + sub * kTile;
          const T* KY = ky.data() + sub * kTile;
          const T* KZ = kz.data() + sub * kTile;
          const T* GR = gr.data() + sub * kTile;
          const T* GI = gi.data() + sub * kTile;
          T w[10][kTile];
          for (int64_t j = 0; j < kTile; ++j) {
            const T g0 = GR[j] * L.f0r[j] + GI[j] * L.f0i[j];  // Re(conj(G) f)
            const T gA = GR[j] * L.far_[j] + GI[j] * L.fai[j];
            const T gB = GR[j] * L.fbr[j] + GI[j] * L.fbi[j];
            const T gC = GR[j] * L.fcr[j] + GI[j] * L.fci[j];
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
      // implicit barrier before the next block overwrites the tables
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

}  // namespace

at::Tensor forward_cpu(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& weights,
                       const at::Tensor& freqs) {
  const int64_t V = verts.size(0), F = faces.size(0), K = freqs.size(0);
  const auto cdtype = verts.scalar_type() == at::kDouble ? at::kComplexDouble : at::kComplexFloat;
  at::Tensor out = at::zeros({K}, verts.options().dtype(cdtype));
  if (K == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "meshft_forward_cpu", [&] {
    const scalar_t* pv = verts.data_ptr<scalar_t>();
    const int64_t* pf = faces.data_ptr<int64_t>();
    const scalar_t* pw = weights.data_ptr<scalar_t>();
    const scalar_t* pk = freqs.data_ptr<scalar_t>();
    c10::complex<scalar_t>* po = out.data_ptr<c10::complex<scalar_t>>();
    pybind11::gil_scoped_release no_gil;
    forward_kernel<scalar_t>(pv, pf, pw, pk, V, F, K, po);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& verts, const at::Tensor& faces,
                                                const at::Tensor& weights, const at::Tensor& freqs,
                                                const at::Tensor& grad_out) {
  const int64_t V = verts.size(0), F = faces.size(0), K = freqs.size(0);
  at::Tensor grad_verts = at::zeros_like(verts);
  at::Tensor grad_weights = at::zeros_like(weights);
  if (K == 0 || F == 0) return {grad_verts, grad_weights};
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "meshft_backward_cpu", [&] {
    const scalar_t* pv = verts.data_ptr<scalar_t>();
    const int64_t* pf = faces.data_ptr<int64_t>();
    const scalar_t* pw = weights.data_ptr<scalar_t>();
    const scalar_t* pk = freqs.data_ptr<scalar_t>();
    const c10::complex<scalar_t>* pg = grad_out.data_ptr<c10::complex<scalar_t>>();
    scalar_t* pgv = grad_verts.data_ptr<scalar_t>();
    scalar_t* pgw = grad_weights.data_ptr<scalar_t>();
    pybind11::gil_scoped_release no_gil;
    backward_kernel<scalar_t>(pv, pf, pw, pk, pg, V, F, K, pgv, pgw);
  });
  return {grad_verts, grad_weights};
}

}  // namespace meshft
