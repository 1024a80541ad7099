// CPU (OpenMP) kernels of the mesh Fourier transform. The per-element math is in
// meshft_math.h (shared with the CUDA kernels); this file only organises the loops.
//
// Both directions work on tiles of kTile frequencies. For a tile, the absolute phase
// phi_v = 2 pi k.v (double) and exp(-i phi_v) (compute precision T) of every vertex are
// tabulated once, vertex-major ([v][j]) so that a face reads three short contiguous rows.
// Relative phases p = phi_b - phi_a are formed in double and rounded to T, so their error is
// relative to p itself, not to the hundreds of radians of the absolute phases.
//
// forward : threads own tiles of frequencies (each with its private tables) and loop over all
//           faces, accumulating U(k) in double. No reduction across threads.
// backward: tiles are processed one after the other; the table of a tile is built by all
//           threads together, then threads own faces and accumulate, per face, the frequency
//           sums R = sum_k Re(conj(G) f) and V_corner = sum_k Re(conj(G) f_corner) k in
//           double. Corner gradients are gathered to the vertices serially (deterministic,
//           no atomics).
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "meshft.h"
#include "meshft_math.h"

namespace meshft {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr int64_t kTile = 32;

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

// Fill the tables of frequencies [k0, k0 + kn) for vertices [v0, v1).
template <typename T>
inline void fill_tables(const T* verts, const T* freqs, int64_t k0, int64_t kn, int64_t v0,
                        int64_t v1, double* phi, Cplx<T>* ex) {
  for (int64_t v = v0; v < v1; ++v) {
    const double x = verts[3 * v], y = verts[3 * v + 1], z = verts[3 * v + 2];
    double* prow = phi + v * kTile;
    Cplx<T>* erow = ex + v * kTile;
    for (int64_t j = 0; j < kn; ++j) {
      const T* k = freqs + 3 * (k0 + j);
      const double ph = kTwoPi * (double(k[0]) * x + double(k[1]) * y + double(k[2]) * z);
      prow[j] = ph;
      erow[j] = expmi<T>(ph);
    }
    for (int64_t j = kn; j < kTile; ++j) {  // padding lanes: harmless values
      prow[j] = 0.0;
      erow[j] = {T(1), T(0)};
    }
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
    std::vector<double> phi(static_cast<size_t>(V * kTile));
    std::vector<Cplx<T>> ex(static_cast<size_t>(V * kTile));
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int64_t k0 = tile * kTile;
      const int64_t kn = std::min(kTile, K - k0);
      fill_tables(verts, freqs, k0, kn, 0, V, phi.data(), ex.data());
      double acc_re[kTile], acc_im[kTile];
      for (int64_t j = 0; j < kTile; ++j) acc_re[j] = acc_im[j] = 0.0;
      for (int64_t i = 0; i < n_live; ++i) {
        const FaceGeom& g = geom[live[i]];
        const double s = w2a[i];
        const double* pa = phi.data() + g.a * kTile;
        const double* pb = phi.data() + g.b * kTile;
        const double* pc = phi.data() + g.c * kTile;
        const Cplx<T>* ea = ex.data() + g.a * kTile;
        const Cplx<T>* eb = ex.data() + g.b * kTile;
        const Cplx<T>* ec = ex.data() + g.c * kTile;
        for (int64_t j = 0; j < kn; ++j) {
          const T p = T(pb[j] - pa[j]);
          const T q = T(pc[j] - pa[j]);
          const Cplx<T> f = tri_f<T>(p, q, ea[j], eb[j], ec[j]);
          acc_re[j] += s * double(f.re);
          acc_im[j] += s * double(f.im);
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
  std::vector<double> phi(static_cast<size_t>(V * kTile));
  std::vector<Cplx<T>> ex(static_cast<size_t>(V * kTile));
  const int64_t n_tiles = (K + kTile - 1) / kTile;
  const int nt = std::max(1, at::get_num_threads());

#pragma omp parallel num_threads(nt)
  {
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int64_t k0 = tile * kTile;
      const int64_t kn = std::min(kTile, K - k0);
#pragma omp for schedule(static)
      for (int64_t v = 0; v < V; ++v) {
        fill_tables(verts, freqs, k0, kn, v, v + 1, phi.data(), ex.data());
      }
      // implicit barrier: the tables are complete
      T kx[kTile], ky[kTile], kz[kTile];
      Cplx<T> gc[kTile];
      for (int64_t j = 0; j < kn; ++j) {
        kx[j] = freqs[3 * (k0 + j)];
        ky[j] = freqs[3 * (k0 + j) + 1];
        kz[j] = freqs[3 * (k0 + j) + 2];
        gc[j] = {grad_out[k0 + j].real(), grad_out[k0 + j].imag()};
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n_live; ++i) {
        const FaceGeom& g = geom[live[i]];
        const double* pa = phi.data() + g.a * kTile;
        const double* pb = phi.data() + g.b * kTile;
        const double* pc = phi.data() + g.c * kTile;
        const Cplx<T>* ea = ex.data() + g.a * kTile;
        const Cplx<T>* eb = ex.data() + g.b * kTile;
        const Cplx<T>* ec = ex.data() + g.c * kTile;
        double r = 0.0, va0 = 0.0, va1 = 0.0, va2 = 0.0, vb0 = 0.0, vb1 = 0.0, vb2 = 0.0,
               vc0 = 0.0, vc1 = 0.0, vc2 = 0.0;
        for (int64_t j = 0; j < kn; ++j) {
          const T p = T(pb[j] - pa[j]);
          const T q = T(pc[j] - pa[j]);
          Cplx<T> f0, fa, fb, fc;
          tri_f_grad<T>(p, q, ea[j], eb[j], ec[j], f0, fa, fb, fc);
          const double g0 = re_conj_mul(gc[j], f0);
          const double gA = re_conj_mul(gc[j], fa);
          const double gB = re_conj_mul(gc[j], fb);
          const double gC = re_conj_mul(gc[j], fc);
          const double k0d = kx[j], k1d = ky[j], k2d = kz[j];
          r += g0;
          va0 += gA * k0d; va1 += gA * k1d; va2 += gA * k2d;
          vb0 += gB * k0d; vb1 += gB * k1d; vb2 += gB * k2d;
          vc0 += gC * k0d; vc1 += gC * k1d; vc2 += gC * k2d;
        }
        FaceAcc& A = acc[i];
        A.r += r;
        A.va[0] += va0; A.va[1] += va1; A.va[2] += va2;
        A.vb[0] += vb0; A.vb[1] += vb1; A.vb[2] += vb2;
        A.vc[0] += vc0; A.vc[1] += vc1; A.vc[2] += vc2;
      }
      // implicit barrier before the next tile overwrites the tables
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
