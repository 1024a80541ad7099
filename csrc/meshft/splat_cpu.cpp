// CPU kernels of the renderer's real-space route for an axis-aligned Gaussian PSF
// (deltamic_core.render.realspace): the quadrature points of every triangle, generated on the
// fly from a table of rules, splatted with the truncated separable Gaussian on the voxel
// centres, and the adjoint (a gather contracted with the window's factors and their
// derivatives). The pure-torch path in realspace.py computes the same sums and is the
// reference of tests/test_render_realspace.py.
//
// Per point y with strength s (= face strength x rule weight) and per axis a, the window's
// first voxel is i0 = floor((y - o - r) / h) + 1 and the displacements are d_t = d0 + t h,
// d0 = i0 h + o - y in (-r, -r + h]. The per-axis factor is
//     g(d) = (G(d; sigma) - G(r; sigma)) / n(c)   for |d| <= r, else 0
// (continuous at the cut, unit integral; see GaussianKernel). A coarse level's PSF (the
// Gaussian followed by the mean of B fine samples spaced b, BlockAveragedPSF) is per axis the
// mean of B such factors shifted by c_m = (m - (B - 1) / 2) b: g_B(d) = (1/B) sum_m g(d + c_m),
// whose window reaches R = r + (B - 1) b / 2 (B = 1: the plain Gaussian). The Gaussians of one axis are a
// geometric-like sequence: G(d_{t+1}) = G(d_t) * rho_t, rho_{t+1} = rho_t * exp(-h^2 / sigma^2),
// so each axis costs two exponentials per point, not one per window voxel.
//
// forward : each thread splats a contiguous share of the faces into its own image (the first
//           thread into the output), then the images are summed (no atomics).
// backward: faces are independent (per-face outputs), the sigma gradient is reduced per thread.
// Points whose window misses the image are skipped; windows are clipped at the image border.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "meshft.h"
#include "splat.h"

namespace splat {
namespace {

constexpr int kMaxWindow = 64;  // per axis (checked by the binding)

struct Axis {
  double h, o, r, sigma;
  int64_t n, W;
  double inv2s2, cn, cut, qq, inv_s2;
  int64_t B;    // block-average samples (1: none)
  double b, R;  // their spacing; the window's reach r + (B - 1) b / 2
};

struct Setup {
  Axis ax[3];
  int64_t Y, X;
};

// the low-rank table PSF (splat_table_kernels.h): per axis, node values and derivatives of
// every term on a lattice of step dh = h / q, and each term's reach
struct TableAxis {
  const double* val;  // (rank, J): node values
  const double* der;  // (rank, J): node derivatives (per um)
  int64_t J, q;
  double dh;
  const double* reach;  // (rank,): |d| beyond which the term is zero (um)
};

struct TableSetup {
  TableAxis t[3];
  int64_t rank;
};

Setup make_setup(const std::vector<int64_t>& shape, const std::vector<double>& spacing,
                 const std::vector<double>& origin, const std::vector<double>& sigma,
                 const std::vector<double>& radius, const std::vector<int64_t>& window, double phi_c,
                 double norm, const std::vector<int64_t>& block, const std::vector<double>& block_step) {
  Setup s;
  for (int a = 0; a < 3; ++a) {
    Axis& A = s.ax[a];
    A.h = spacing[a];
    A.o = origin[a];
    A.r = radius[a];
    A.sigma = sigma[a];
    A.n = shape[a];
    A.W = window[a];
    A.inv2s2 = 0.5 / (A.sigma * A.sigma);
    A.inv_s2 = 1.0 / (A.sigma * A.sigma);
    A.B = block[a];
    A.b = block_step[a];
    A.R = A.r + 0.5 * static_cast<double>(A.B - 1) * A.b;
    A.cn = 1.0 / (std::sqrt(2.0 * M_PI) * A.sigma * norm * static_cast<double>(A.B));
    A.cut = phi_c / (A.sigma * norm * static_cast<double>(A.B));
    A.qq = std::exp(-A.h * A.h * A.inv_s2);
  }
  s.Y = shape[1];
  s.X = shape[2];
  return s;
}

#define DELTAMIC_SIMD_KERNELS "splat_cpu_kernels.h"
#include "simd_clones.h"
// the low-rank table kernel's loops (they use the helpers above, in the same clone namespaces)
#define DELTAMIC_SIMD_KERNELS "splat_table_kernels.h"
#include "simd_clones.h"

// the clone meshft's kernels use (DELTAMIC_MESHFT_ISA=baseline forces the portable one)
bool use_avx2() {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  static const bool ok = std::string(meshft::cpu_isa()) == "avx2+fma";
  return ok;
#else
  return false;
#endif
}

template <typename T>
void forward_faces(const Setup& S, const T* tri, const T* strength, const int64_t* face_rule,
                   const int64_t* rule_start, const double* lam, const double* rw, int64_t f0,
                   int64_t f1, T* img) {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  if (use_avx2()) return isa_avx2::forward_faces<T>(S, tri, strength, face_rule, rule_start, lam, rw, f0, f1, img);
#endif
  isa_base::forward_faces<T>(S, tri, strength, face_rule, rule_start, lam, rw, f0, f1, img);
}

template <typename T, bool Sig>
void backward_faces(const Setup& S, const T* tri, const T* strength, const int64_t* face_rule,
                    const int64_t* rule_start, const double* lam, const double* rw, const T* grad,
                    int64_t f0, int64_t f1, T* gtri, T* gstr, double* gsig) {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  if (use_avx2())
    return isa_avx2::backward_faces<T, Sig>(S, tri, strength, face_rule, rule_start, lam, rw, grad, f0, f1, gtri,
                                            gstr, gsig);
#endif
  isa_base::backward_faces<T, Sig>(S, tri, strength, face_rule, rule_start, lam, rw, grad, f0, f1, gtri, gstr,
                                   gsig);
}

template <typename T>
void table_forward_faces(const Setup& S, const TableSetup& TS, const T* tri, const T* strength,
                         const int64_t* face_rule, const int64_t* rule_start, const double* lam, const double* rw,
                         int64_t f0, int64_t f1, T* img) {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  if (use_avx2())
    return isa_avx2::table_forward_faces<T>(S, TS, tri, strength, face_rule, rule_start, lam, rw, f0, f1, img);
#endif
  isa_base::table_forward_faces<T>(S, TS, tri, strength, face_rule, rule_start, lam, rw, f0, f1, img);
}

template <typename T>
void table_backward_faces(const Setup& S, const TableSetup& TS, const T* tri, const T* strength,
                          const int64_t* face_rule, const int64_t* rule_start, const double* lam, const double* rw,
                          const T* grad, int64_t f0, int64_t f1, T* gtri, T* gstr) {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  if (use_avx2())
    return isa_avx2::table_backward_faces<T>(S, TS, tri, strength, face_rule, rule_start, lam, rw, grad, f0, f1,
                                             gtri, gstr);
#endif
  isa_base::table_backward_faces<T>(S, TS, tri, strength, face_rule, rule_start, lam, rw, grad, f0, f1, gtri,
                                    gstr);
}

void check_args(const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule,
                const at::Tensor& rule_start, const at::Tensor& lam, const at::Tensor& rw,
                const std::vector<int64_t>& shape, const std::vector<int64_t>& window,
                const std::vector<double>& spacing, const std::vector<double>& origin,
                const std::vector<double>& sigma, const std::vector<double>& radius,
                const std::vector<int64_t>& block, const std::vector<double>& block_step) {
  TORCH_CHECK_VALUE(block.size() == 3 && block_step.size() == 3, "block and block_step must have 3 entries");
  for (int a = 0; a < 3; ++a)
    TORCH_CHECK_VALUE(block[a] >= 1 && block[a] <= 64 && block_step[a] >= 0,
                      "block must be in [1, 64] and block_step non-negative");
  TORCH_CHECK_VALUE(tri.is_cpu() && tri.dim() == 3 && tri.size(1) == 3 && tri.size(2) == 3 &&
                        tri.is_contiguous(),
                    "tri must be a contiguous CPU tensor of shape (F, 3, 3)");
  const auto dt = tri.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble, "tri must be float32 or float64");
  const int64_t F = tri.size(0);
  TORCH_CHECK_VALUE(strength.is_cpu() && strength.scalar_type() == dt && strength.dim() == 1 &&
                        strength.size(0) == F && strength.is_contiguous(),
                    "strength must be a contiguous CPU (F,) tensor of tri's dtype");
  TORCH_CHECK_VALUE(face_rule.is_cpu() && face_rule.scalar_type() == at::kLong &&
                        face_rule.dim() == 1 && face_rule.size(0) == F && face_rule.is_contiguous(),
                    "face_rule must be a contiguous CPU int64 (F,) tensor");
  TORCH_CHECK_VALUE(rule_start.is_cpu() && rule_start.scalar_type() == at::kLong &&
                        rule_start.dim() == 1 && rule_start.size(0) >= 1 &&
                        rule_start.is_contiguous(),
                    "rule_start must be a contiguous CPU int64 (R + 1,) tensor");
  const int64_t Q = lam.size(0);
  TORCH_CHECK_VALUE(lam.is_cpu() && lam.scalar_type() == at::kDouble && lam.dim() == 2 &&
                        lam.size(1) == 3 && lam.is_contiguous(),
                    "lam must be a contiguous CPU float64 (Q, 3) tensor");
  TORCH_CHECK_VALUE(rw.is_cpu() && rw.scalar_type() == at::kDouble && rw.dim() == 1 &&
                        rw.size(0) == Q && rw.is_contiguous(),
                    "rule_weights must be a contiguous CPU float64 (Q,) tensor");
  TORCH_CHECK_VALUE(shape.size() == 3 && window.size() == 3 && spacing.size() == 3 &&
                        origin.size() == 3 && sigma.size() == 3 && radius.size() == 3,
                    "shape, window, spacing, origin, sigma and radius must have 3 entries");
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK_VALUE(shape[a] >= 1 && window[a] >= 1 && window[a] <= kMaxWindow,
                      "window must be in [1, ", kMaxWindow, "] voxels per axis");
    TORCH_CHECK_VALUE(spacing[a] > 0 && sigma[a] > 0 && radius[a] > 0,
                      "spacing, sigma and radius must be positive");
  }
  const int64_t R = rule_start.size(0) - 1;
  if (F > 0) {
    const int64_t lo = face_rule.min().item<int64_t>(), hi = face_rule.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < R, "face_rule index out of range");
  }
  TORCH_CHECK_VALUE(rule_start[0].item<int64_t>() == 0 && rule_start[R].item<int64_t>() == Q,
                    "rule_start must run from 0 to Q");
}

int threads_for(int64_t F) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), F / 64 + 1)));
}

struct Rules {
  const int64_t* face_rule;
  const int64_t* start;
  const double* lam;
  const double* w;
};

template <typename T>
void forward_impl(const Setup& S, const T* tri, const T* str, const Rules& R, int64_t F, int64_t N,
                  int nt, T* out) {
  if (nt == 1) {
    forward_faces<T>(S, tri, str, R.face_rule, R.start, R.lam, R.w, 0, F, out);
    return;
  }
  std::vector<std::vector<T>> priv(nt - 1);
#pragma omp parallel num_threads(nt)
  {
    const int id = omp_get_thread_num();
    const int n = omp_get_num_threads();
    T* dst = out;
    if (id > 0) {
      priv[id - 1].assign(N, T(0));
      dst = priv[id - 1].data();
    }
    const int64_t f0 = F * id / n, f1 = F * (id + 1) / n;
    forward_faces<T>(S, tri, str, R.face_rule, R.start, R.lam, R.w, f0, f1, dst);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      T acc = out[i];
      for (int k = 0; k < n - 1; ++k) acc += priv[k].empty() ? T(0) : priv[k][i];
      out[i] = acc;
    }
  }
}

template <typename T>
void backward_impl(const Setup& S, const T* tri, const T* str, const Rules& R, const T* grad, int64_t F,
                   int nt, bool need_sigma, T* gtri, T* gstr, double* gsig) {
  const int64_t chunk = 32;
  const int64_t n_chunks = (F + chunk - 1) / chunk;
#pragma omp parallel num_threads(nt)
  {
    double loc[3] = {0, 0, 0};
#pragma omp for schedule(dynamic, 1)
    for (int64_t ci = 0; ci < n_chunks; ++ci) {
      const int64_t f0 = ci * chunk, f1 = std::min(F, f0 + chunk);
      if (need_sigma)
        backward_faces<T, true>(S, tri, str, R.face_rule, R.start, R.lam, R.w, grad, f0, f1, gtri, gstr, loc);
      else
        backward_faces<T, false>(S, tri, str, R.face_rule, R.start, R.lam, R.w, grad, f0, f1, gtri, gstr, loc);
    }
#pragma omp critical
    {
      gsig[0] += loc[0];
      gsig[1] += loc[1];
      gsig[2] += loc[2];
    }
  }
}

Rules rules_of(const at::Tensor& face_rule, const at::Tensor& rule_start, const at::Tensor& lam,
               const at::Tensor& rw) {
  return Rules{face_rule.data_ptr<int64_t>(), rule_start.data_ptr<int64_t>(), lam.data_ptr<double>(),
               rw.data_ptr<double>()};
}

TableSetup make_table(const Setup& S, const std::vector<int64_t>& q, const std::vector<at::Tensor>& values,
                      const std::vector<at::Tensor>& derivs, const at::Tensor& reach) {
  TORCH_CHECK_VALUE(q.size() == 3 && values.size() == 3 && derivs.size() == 3,
                    "q, values and derivs must have 3 entries (z, y, x)");
  TORCH_CHECK_VALUE(reach.is_cpu() && reach.scalar_type() == at::kDouble && reach.dim() == 2 &&
                        reach.size(0) == 3 && reach.is_contiguous(),
                    "reach must be a contiguous CPU float64 (3, rank) tensor");
  TableSetup T;
  T.rank = reach.size(1);
  TORCH_CHECK_VALUE(T.rank >= 1 && T.rank <= 64, "the table's rank must be in [1, 64]");
  for (int a = 0; a < 3; ++a) {
    const at::Tensor& v = values[a];
    const at::Tensor& d = derivs[a];
    TORCH_CHECK_VALUE(v.is_cpu() && v.scalar_type() == at::kDouble && v.dim() == 2 && v.size(0) == T.rank &&
                          v.is_contiguous() && d.is_cpu() && d.scalar_type() == at::kDouble &&
                          d.sizes() == v.sizes() && d.is_contiguous(),
                      "values and derivs must be contiguous CPU float64 (rank, J) tensors");
    TORCH_CHECK_VALUE(q[a] >= 1 && v.size(1) >= S.ax[a].W * q[a] + 2,
                      "each table needs q >= 1 and at least window * q + 2 nodes");
    TableAxis& A = T.t[a];
    A.val = v.data_ptr<double>();
    A.der = d.data_ptr<double>();
    A.J = v.size(1);
    A.q = q[a];
    A.dh = S.ax[a].h / static_cast<double>(q[a]);
    A.reach = reach.data_ptr<double>() + a * T.rank;
  }
  return T;
}

template <typename T>
void table_forward_impl(const Setup& S, const TableSetup& TS, const T* tri, const T* str, const Rules& R, int64_t F,
                        int64_t N, int nt, T* out) {
  if (nt == 1) {
    table_forward_faces<T>(S, TS, tri, str, R.face_rule, R.start, R.lam, R.w, 0, F, out);
    return;
  }
  std::vector<std::vector<T>> priv(nt - 1);
#pragma omp parallel num_threads(nt)
  {
    const int id = omp_get_thread_num();
    const int n = omp_get_num_threads();
    T* dst = out;
    if (id > 0) {
      priv[id - 1].assign(N, T(0));
      dst = priv[id - 1].data();
    }
    const int64_t f0 = F * id / n, f1 = F * (id + 1) / n;
    table_forward_faces<T>(S, TS, tri, str, R.face_rule, R.start, R.lam, R.w, f0, f1, dst);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      T acc = out[i];
      for (int k = 0; k < n - 1; ++k) acc += priv[k].empty() ? T(0) : priv[k][i];
      out[i] = acc;
    }
  }
}

template <typename T>
void table_backward_impl(const Setup& S, const TableSetup& TS, const T* tri, const T* str, const Rules& R,
                         const T* grad, int64_t F, int nt, T* gtri, T* gstr) {
  const int64_t chunk = 32;
  const int64_t n_chunks = (F + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t ci = 0; ci < n_chunks; ++ci) {
    const int64_t f0 = ci * chunk, f1 = std::min(F, f0 + chunk);
    table_backward_faces<T>(S, TS, tri, str, R.face_rule, R.start, R.lam, R.w, grad, f0, f1, gtri, gstr);
  }
}

}  // namespace

at::Tensor gauss_forward(const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule,
                         const at::Tensor& rule_start, const at::Tensor& lam, const at::Tensor& rw,
                         const std::vector<int64_t>& shape, const std::vector<double>& spacing,
                         const std::vector<double>& origin, const std::vector<double>& sigma,
                         const std::vector<double>& radius, const std::vector<int64_t>& window,
                         double phi_c, double norm, const std::vector<int64_t>& block,
                         const std::vector<double>& block_step) {
  check_args(tri, strength, face_rule, rule_start, lam, rw, shape, window, spacing, origin, sigma, radius, block,
             block_step);
  const Setup S = make_setup(shape, spacing, origin, sigma, radius, window, phi_c, norm, block, block_step);
  at::Tensor img = at::zeros({shape[0], shape[1], shape[2]}, tri.options());
  const int64_t F = tri.size(0);
  const int nt = threads_for(F);
  const Rules R = rules_of(face_rule, rule_start, lam, rw);
  pybind11::gil_scoped_release nogil;
  if (tri.scalar_type() == at::kDouble)
    forward_impl<double>(S, tri.data_ptr<double>(), strength.data_ptr<double>(), R, F, img.numel(), nt,
                         img.data_ptr<double>());
  else
    forward_impl<float>(S, tri.data_ptr<float>(), strength.data_ptr<float>(), R, F, img.numel(), nt,
                        img.data_ptr<float>());
  return img;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gauss_backward(
    const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule,
    const at::Tensor& rule_start, const at::Tensor& lam, const at::Tensor& rw, const at::Tensor& grad,
    const std::vector<int64_t>& shape, const std::vector<double>& spacing,
    const std::vector<double>& origin, const std::vector<double>& sigma,
    const std::vector<double>& radius, const std::vector<int64_t>& window, double phi_c, double norm,
    bool need_sigma, const std::vector<int64_t>& block, const std::vector<double>& block_step) {
  check_args(tri, strength, face_rule, rule_start, lam, rw, shape, window, spacing, origin, sigma, radius, block,
             block_step);
  TORCH_CHECK_VALUE(grad.is_cpu() && grad.scalar_type() == tri.scalar_type() && grad.dim() == 3 &&
                        grad.size(0) == shape[0] && grad.size(1) == shape[1] &&
                        grad.size(2) == shape[2] && grad.is_contiguous(),
                    "grad must be a contiguous CPU tensor of the image's shape and tri's dtype");
  const Setup S = make_setup(shape, spacing, origin, sigma, radius, window, phi_c, norm, block, block_step);
  const int64_t F = tri.size(0);
  at::Tensor gtri = at::zeros_like(tri);
  at::Tensor gstr = at::zeros_like(strength);
  at::Tensor gsig = at::zeros({3}, tri.options().dtype(at::kDouble));
  const int nt = threads_for(F);
  const Rules R = rules_of(face_rule, rule_start, lam, rw);
  pybind11::gil_scoped_release nogil;
  if (tri.scalar_type() == at::kDouble)
    backward_impl<double>(S, tri.data_ptr<double>(), strength.data_ptr<double>(), R, grad.data_ptr<double>(),
                          F, nt, need_sigma, gtri.data_ptr<double>(), gstr.data_ptr<double>(),
                          gsig.data_ptr<double>());
  else
    backward_impl<float>(S, tri.data_ptr<float>(), strength.data_ptr<float>(), R, grad.data_ptr<float>(), F,
                         nt, need_sigma, gtri.data_ptr<float>(), gstr.data_ptr<float>(),
                         gsig.data_ptr<double>());
  return {gtri, gstr, gsig};
}

at::Tensor table_forward(const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule,
                         const at::Tensor& rule_start, const at::Tensor& lam, const at::Tensor& rw,
                         const std::vector<int64_t>& shape, const std::vector<double>& spacing,
                         const std::vector<double>& origin, const std::vector<double>& radius,
                         const std::vector<int64_t>& window, const std::vector<int64_t>& q,
                         const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& derivs,
                         const at::Tensor& reach) {
  const std::vector<double> one{1.0, 1.0, 1.0}, nostep{0.0, 0.0, 0.0};
  const std::vector<int64_t> noblock{1, 1, 1};
  check_args(tri, strength, face_rule, rule_start, lam, rw, shape, window, spacing, origin, one, radius, noblock,
             nostep);
  const Setup S = make_setup(shape, spacing, origin, one, radius, window, 0.0, 1.0, noblock, nostep);
  const TableSetup TS = make_table(S, q, values, derivs, reach);
  at::Tensor img = at::zeros({shape[0], shape[1], shape[2]}, tri.options());
  const int64_t F = tri.size(0);
  const int nt = threads_for(F);
  const Rules R = rules_of(face_rule, rule_start, lam, rw);
  pybind11::gil_scoped_release nogil;
  if (tri.scalar_type() == at::kDouble)
    table_forward_impl<double>(S, TS, tri.data_ptr<double>(), strength.data_ptr<double>(), R, F, img.numel(), nt,
                               img.data_ptr<double>());
  else
    table_forward_impl<float>(S, TS, tri.data_ptr<float>(), strength.data_ptr<float>(), R, F, img.numel(), nt,
                              img.data_ptr<float>());
  return img;
}

std::tuple<at::Tensor, at::Tensor> table_backward(
    const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule, const at::Tensor& rule_start,
    const at::Tensor& lam, const at::Tensor& rw, const at::Tensor& grad, const std::vector<int64_t>& shape,
    const std::vector<double>& spacing, const std::vector<double>& origin, const std::vector<double>& radius,
    const std::vector<int64_t>& window, const std::vector<int64_t>& q, const std::vector<at::Tensor>& values,
    const std::vector<at::Tensor>& derivs, const at::Tensor& reach) {
  const std::vector<double> one{1.0, 1.0, 1.0}, nostep{0.0, 0.0, 0.0};
  const std::vector<int64_t> noblock{1, 1, 1};
  check_args(tri, strength, face_rule, rule_start, lam, rw, shape, window, spacing, origin, one, radius, noblock,
             nostep);
  TORCH_CHECK_VALUE(grad.is_cpu() && grad.scalar_type() == tri.scalar_type() && grad.dim() == 3 &&
                        grad.size(0) == shape[0] && grad.size(1) == shape[1] &&
                        grad.size(2) == shape[2] && grad.is_contiguous(),
                    "grad must be a contiguous CPU tensor of the image's shape and tri's dtype");
  const Setup S = make_setup(shape, spacing, origin, one, radius, window, 0.0, 1.0, noblock, nostep);
  const TableSetup TS = make_table(S, q, values, derivs, reach);
  const int64_t F = tri.size(0);
  at::Tensor gtri = at::zeros_like(tri);
  at::Tensor gstr = at::zeros_like(strength);
  const int nt = threads_for(F);
  const Rules R = rules_of(face_rule, rule_start, lam, rw);
  pybind11::gil_scoped_release nogil;
  if (tri.scalar_type() == at::kDouble)
    table_backward_impl<double>(S, TS, tri.data_ptr<double>(), strength.data_ptr<double>(), R,
                                grad.data_ptr<double>(), F, nt, gtri.data_ptr<double>(), gstr.data_ptr<double>());
  else
    table_backward_impl<float>(S, TS, tri.data_ptr<float>(), strength.data_ptr<float>(), R, grad.data_ptr<float>(),
                               F, nt, gtri.data_ptr<float>(), gstr.data_ptr<float>());
  return {gtri, gstr};
}

}  // namespace splat
