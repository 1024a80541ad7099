// CPU (OpenMP) kernels of the mesh Fourier transform. The per-element math is in
// meshft_math.h (shared with the CUDA kernels); this file only organises the loops.
//
// Both directions work on tiles of kTile frequencies ("lanes"). A face's value is
// exp(-i phi_a) f[0, p, q] with the relative phases p = 2 pi k.(b - a), q = 2 pi k.(c - a)
// formed in double from the face's edge vectors (exact differences of the vertices) and
// rounded to T, so their error is relative to p itself, not to the hundreds of radians of the
// absolute phases. Faces are grouped by an "anchor" corner chosen greedily so that a third of
// the vertices anchor ~6 faces each; per group and tile, the anchor's exp(-i phi_a) is formed
// once in double. No per-vertex tables: the hot loop reads only the tile's frequencies and the
// face's geometry (the previous version's tables were megabytes read in mesh order, and cache
// misses dominated). Per face, the series (length chosen per tile from the largest phase
// there) runs over all lanes in straight-line code the compiler vectorises; the lanes that
// need the recursive formulas are gathered and only those run them (branch-free, vectorised).
//
// forward : threads own tiles of frequencies and loop over all anchor groups, accumulating
//           U(k) in double. No reduction across threads.
// backward: threads take chunks of consecutive anchor groups (dynamically) and walk the
//           frequencies in blocks, accumulating, per face, R = sum_k Re(conj(G) f) and
//           V_corner = sum_k Re(conj(G) f_corner) k (in T within a block, in double across
//           blocks). No barriers. Corner gradients are gathered to the vertices serially
//           (deterministic, no atomics). Results do not depend on the number of threads.
//
// The loops live in meshft_cpu_kernels.h, compiled twice (AVX2+FMA and baseline x86-64) and chosen
// at run time, so the extension stays portable without giving up 8-wide vectors.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/extension.h>  // pybind11::gil_scoped_release

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "meshft.h"
#include "meshft_math.h"

namespace meshft {
namespace {

#define DELTAMIC_SIMD_KERNELS "meshft_cpu_kernels.h"
#include "simd_clones.h"

// DELTAMIC_MESHFT_ISA=baseline forces the portable clone (the tests run both).
bool use_avx2() {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  static const bool ok = [] {
    const char* isa = std::getenv("DELTAMIC_MESHFT_ISA");
    if (isa != nullptr && std::string(isa) == "baseline") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

template <typename T>
void forward_kernel(const T* verts, const int64_t* faces, const T* weights, const T* freqs,
                    int64_t V, int64_t F, int64_t K, c10::complex<T>* out) {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  if (use_avx2()) return isa_avx2::forward_kernel<T>(verts, faces, weights, freqs, V, F, K, out);
#endif
  isa_base::forward_kernel<T>(verts, faces, weights, freqs, V, F, K, out);
}

template <typename T>
void backward_kernel(const T* verts, const int64_t* faces, const T* weights, const T* freqs,
                     const c10::complex<T>* grad_out, int64_t V, int64_t F, int64_t K,
                     T* grad_verts, T* grad_weights) {
#ifdef DELTAMIC_HAVE_AVX2_CLONE
  if (use_avx2()) {
    return isa_avx2::backward_kernel<T>(verts, faces, weights, freqs, grad_out, V, F, K,
                                        grad_verts, grad_weights);
  }
#endif
  isa_base::backward_kernel<T>(verts, faces, weights, freqs, grad_out, V, F, K, grad_verts,
                               grad_weights);
}

}  // namespace

const char* cpu_isa() { return use_avx2() ? "avx2+fma" : "baseline"; }

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
