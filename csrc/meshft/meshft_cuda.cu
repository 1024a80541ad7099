// CUDA kernels of the mesh Fourier transform. The per-element math is meshft_math.h, the same
// code the CPU kernels run (and the CPU tests check).
//
// Frequencies are processed in chunks whose per-vertex tables fit a memory budget. For a chunk:
//  1. vertex_tables: one thread per (vertex, frequency) computes the phase phi = 2 pi k.v in
//     double, reduces it modulo 2 pi in double, and stores exp(-i phi) in T plus phi split into
//     two T values (hi + lo). Relative phases are then formed as (hi_b - hi_a) + (lo_b - lo_a):
//     the first difference is exact when the two phases are close (Sterbenz) and otherwise
//     rounds at the level of the difference itself, so no double arithmetic is needed per face.
//     Tables are vertex-major ([v][k]): consecutive threads (frequencies) read consecutive
//     addresses, and the whole table of a chunk stays in L2 for typical meshes. (Staging it in
//     shared memory does not work: a face can reference any vertex, and V x frequencies of a
//     block is far more than 48 KB.)
//  2. forward: one thread per frequency loops over the faces, staged 128 at a time in shared
//     memory (indices and w * 2A, read by all threads: broadcast); partial sums over a face tile
//     in T, totals in double.
//  3. backward: one warp per triangle; lanes stride over the frequencies of the chunk, sum in T
//     over 16 frequencies then in double, warp-reduce with shuffles; the per-face sums of all
//     chunks accumulate in a (F, 10) double buffer owned by that warp (no races). A last kernel
//     forms corner gradients and adds them to the vertices with double atomics.
// No fast-math: the series and the double phase reduction rely on IEEE arithmetic.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "meshft.h"
#include "meshft_math.h"

namespace meshft {
namespace {

constexpr int kThreads = 128;
constexpr int kFaceTile = 128;
constexpr int kFlush = 16;           // T partial sums are moved to double every kFlush terms
constexpr int64_t kTableBudget = int64_t(256) << 20;  // bytes of per-vertex tables per chunk

template <typename T>
struct Tables {
  T* hi;
  T* lo;
  Cplx<T>* ex;
  int64_t ld;  // leading dimension (frequencies per row)
};

// Face geometry: [two_area, grad_a A (3), grad_b A (3), grad_c A (3)] per face, in double.
template <typename T>
__global__ void face_geometry_kernel(const T* __restrict__ verts, const int64_t* __restrict__ faces,
                                     int64_t F, double* __restrict__ geom) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= F) return;
  double p[3][3];
  for (int c = 0; c < 3; ++c) {
    const int64_t v = faces[3 * t + c];
    for (int d = 0; d < 3; ++d) p[c][d] = double(verts[3 * v + d]);
  }
  double two_area, ga[3], gb[3], gc[3];
  area_grad(p[0], p[1], p[2], two_area, ga, gb, gc);
  double* g = geom + 10 * t;
  g[0] = two_area;
  for (int d = 0; d < 3; ++d) {
    g[1 + d] = ga[d];
    g[4 + d] = gb[d];
    g[7 + d] = gc[d];
  }
}

template <typename T>
__global__ void vertex_tables_kernel(const T* __restrict__ verts, const T* __restrict__ freqs,
                                     int64_t V, int64_t k0, int64_t kn, Tables<T> tab) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= V * kn) return;
  const int64_t v = idx / kn, j = idx - v * kn;
  const T* k = freqs + 3 * (k0 + j);
  const double phi = kTwoPi * (double(k[0]) * double(verts[3 * v]) +
                               double(k[1]) * double(verts[3 * v + 1]) +
                               double(k[2]) * double(verts[3 * v + 2]));
  const SplitPhase<T> sp = split_phase<T>(phi);
  tab.hi[v * tab.ld + j] = sp.hi;
  tab.lo[v * tab.ld + j] = sp.lo;
  tab.ex[v * tab.ld + j] = expmi<T>(phi);
}

template <typename T>
__device__ inline T table_rel_phase(const Tables<T>& tab, int64_t a, int64_t b, int64_t j) {
  return rel_phase(SplitPhase<T>{tab.hi[a * tab.ld + j], tab.lo[a * tab.ld + j]},
                   SplitPhase<T>{tab.hi[b * tab.ld + j], tab.lo[b * tab.ld + j]});
}

template <typename T>
__global__ void forward_kernel(const int64_t* __restrict__ faces, const T* __restrict__ weights,
                               const double* __restrict__ geom, int64_t F, int64_t k0, int64_t kn,
                               Tables<T> tab, Cplx<T>* __restrict__ out) {
  __shared__ int64_t sa[kFaceTile], sb[kFaceTile], sc[kFaceTile];
  __shared__ T sw[kFaceTile];
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  double acc_re = 0.0, acc_im = 0.0;
  for (int64_t f0 = 0; f0 < F; f0 += kFaceTile) {
    const int n = F - f0 < kFaceTile ? int(F - f0) : kFaceTile;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int64_t t = f0 + i;
      sa[i] = faces[3 * t];
      sb[i] = faces[3 * t + 1];
      sc[i] = faces[3 * t + 2];
      sw[i] = T(double(weights[t]) * geom[10 * t]);
    }
    __syncthreads();
    if (j < kn) {
      T pr = T(0), pi = T(0);
      for (int i = 0; i < n; ++i) {
        const T s = sw[i];
        if (s == T(0)) continue;  // uniform across the block: no divergence
        const int64_t a = sa[i], b = sb[i], c = sc[i];
        const T p = table_rel_phase(tab, a, b, j);
        const T q = table_rel_phase(tab, a, c, j);
        const Cplx<T> f = tri_f<T>(p, q, tab.ex[a * tab.ld + j], tab.ex[b * tab.ld + j],
                                   tab.ex[c * tab.ld + j]);
        pr += s * f.re;
        pi += s * f.im;
        if ((i & (kFlush - 1)) == kFlush - 1) {
          acc_re += double(pr);
          acc_im += double(pi);
          pr = pi = T(0);
        }
      }
      acc_re += double(pr);
      acc_im += double(pi);
    }
    __syncthreads();
  }
  if (j < kn) out[k0 + j] = {T(acc_re), T(acc_im)};
}

__device__ inline double warp_sum(double x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
  return x;
}

template <typename T>
__global__ void backward_faces_kernel(const int64_t* __restrict__ faces,
                                      const double* __restrict__ geom, int64_t F,
                                      const T* __restrict__ freqs,
                                      const Cplx<T>* __restrict__ grad_out, int64_t k0, int64_t kn,
                                      Tables<T> tab, double* __restrict__ acc) {
  const int64_t t = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (t >= F) return;                 // whole warp leaves together
  if (!(geom[10 * t] > 0.0)) return;  // degenerate: exactly zero gradient
  const int64_t a = faces[3 * t], b = faces[3 * t + 1], c = faces[3 * t + 2];
  double s[10];
  for (int i = 0; i < 10; ++i) s[i] = 0.0;
  T ps[10];
  for (int i = 0; i < 10; ++i) ps[i] = T(0);
  int count = 0;
  for (int64_t j = lane; j < kn; j += 32) {
    const T p = table_rel_phase(tab, a, b, j);
    const T q = table_rel_phase(tab, a, c, j);
    Cplx<T> f0, fa, fb, fc;
    tri_f_grad<T>(p, q, tab.ex[a * tab.ld + j], tab.ex[b * tab.ld + j], tab.ex[c * tab.ld + j],
                  f0, fa, fb, fc);
    const Cplx<T> g = grad_out[k0 + j];
    const T* k = freqs + 3 * (k0 + j);
    T g0, gA, gB, gC;  // (fc is third_corner(f0, fa, fb), which corner_terms forms itself)
    corner_terms(Cplx<T>{g.re, -g.im}, f0, fa, fb, g0, gA, gB, gC);
    ps[0] += g0;
    for (int d = 0; d < 3; ++d) {
      ps[1 + d] += gA * k[d];
      ps[4 + d] += gB * k[d];
      ps[7 + d] += gC * k[d];
    }
    if (++count == kFlush) {
      for (int i = 0; i < 10; ++i) {
        s[i] += double(ps[i]);
        ps[i] = T(0);
      }
      count = 0;
    }
  }
  for (int i = 0; i < 10; ++i) s[i] = warp_sum(s[i] + double(ps[i]));
  if (lane == 0) {
    for (int i = 0; i < 10; ++i) acc[10 * t + i] += s[i];
  }
}

__device__ inline void atomic_add_f64(double* addr, double val) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600
  auto* p = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *p, assumed;
  do {
    assumed = old;
    old = atomicCAS(p, assumed, __double_as_longlong(val + __longlong_as_double(assumed)));
  } while (assumed != old);
#else
  atomicAdd(addr, val);
#endif
}

// Corner gradients of each face (face_grads in meshft_math.h), added to the vertices.
template <typename T>
__global__ void backward_gather_kernel(const int64_t* __restrict__ faces,
                                       const T* __restrict__ weights,
                                       const double* __restrict__ geom,
                                       const double* __restrict__ acc, int64_t F,
                                       double* __restrict__ grad_verts, T* __restrict__ grad_w) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= F) return;
  const double* g = geom + 10 * t;
  const double* s = acc + 10 * t;
  if (!(g[0] > 0.0)) {
    grad_w[t] = T(0);
    return;
  }
  double out[9];
  grad_w[t] = T(face_grads(double(weights[t]), g[0], s[0], g + 1, s + 1, out));
  for (int c = 0; c < 3; ++c) {
    const int64_t v = faces[3 * t + c];
    for (int d = 0; d < 3; ++d) atomic_add_f64(grad_verts + 3 * v + d, out[3 * c + d]);
  }
}

// Only generic c10 headers are used (c10/cuda needs a CUDA build of torch to even parse), so
// the stream comes from the device-guard interface of the CUDA backend.
cudaStream_t current_stream(const c10::Device& device) {
  const auto* impl = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(impl->getStream(device).native_handle());
}

void check_launch() {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "meshft CUDA kernel launch failed: ", cudaGetErrorString(err));
}

inline unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

template <typename T>
int64_t chunk_size(int64_t V, int64_t K) {
  const int64_t per_freq = V * int64_t(2 * sizeof(T) + sizeof(Cplx<T>));
  return std::max<int64_t>(32, std::min<int64_t>(K, kTableBudget / std::max<int64_t>(per_freq, 1)));
}

template <typename T>
Tables<T> make_tables(at::Tensor& storage, int64_t V, int64_t kc) {
  // one byte buffer holding hi, lo and ex (sizes are multiples of sizeof(T): aligned)
  Tables<T> tab;
  char* base = static_cast<char*>(storage.data_ptr());
  tab.hi = reinterpret_cast<T*>(base);
  tab.lo = reinterpret_cast<T*>(base + V * kc * sizeof(T));
  tab.ex = reinterpret_cast<Cplx<T>*>(base + 2 * V * kc * sizeof(T));
  tab.ld = kc;
  return tab;
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& weights,
                        const at::Tensor& freqs) {
  const c10::DeviceGuard guard(verts.device());
  const int64_t V = verts.size(0), F = faces.size(0), K = freqs.size(0);
  const auto cdtype = verts.scalar_type() == at::kDouble ? at::kComplexDouble : at::kComplexFloat;
  at::Tensor out = at::zeros({K}, verts.options().dtype(cdtype));
  if (K == 0 || F == 0) return out;
  cudaStream_t stream = current_stream(verts.device());
  at::Tensor geom = at::empty({F, 10}, verts.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "meshft_forward_cuda", [&] {
    using T = scalar_t;
    face_geometry_kernel<T><<<blocks_for(F, kThreads), kThreads, 0, stream>>>(
        verts.data_ptr<T>(), faces.data_ptr<int64_t>(), F, geom.data_ptr<double>());
    const int64_t kc = chunk_size<T>(V, K);
    at::Tensor storage =
        at::empty({V * kc * int64_t(2 * sizeof(T) + sizeof(Cplx<T>))}, verts.options().dtype(at::kByte));
    Tables<T> tab = make_tables<T>(storage, V, kc);
    auto* po = reinterpret_cast<Cplx<T>*>(out.data_ptr<c10::complex<T>>());
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t kn = std::min(kc, K - k0);
      vertex_tables_kernel<T><<<blocks_for(V * kn, 256), 256, 0, stream>>>(
          verts.data_ptr<T>(), freqs.data_ptr<T>(), V, k0, kn, tab);
      forward_kernel<T><<<blocks_for(kn, kThreads), kThreads, 0, stream>>>(
          faces.data_ptr<int64_t>(), weights.data_ptr<T>(), geom.data_ptr<double>(), F, k0, kn,
          tab, po);
    }
    check_launch();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& verts, const at::Tensor& faces,
                                                 const at::Tensor& weights,
                                                 const at::Tensor& freqs,
                                                 const at::Tensor& grad_out) {
  const c10::DeviceGuard guard(verts.device());
  const int64_t V = verts.size(0), F = faces.size(0), K = freqs.size(0);
  at::Tensor grad_weights = at::zeros_like(weights);
  if (K == 0 || F == 0) return {at::zeros_like(verts), grad_weights};
  cudaStream_t stream = current_stream(verts.device());
  at::Tensor geom = at::empty({F, 10}, verts.options().dtype(at::kDouble));
  at::Tensor acc = at::zeros({F, 10}, verts.options().dtype(at::kDouble));
  at::Tensor gv = at::zeros({V, 3}, verts.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "meshft_backward_cuda", [&] {
    using T = scalar_t;
    face_geometry_kernel<T><<<blocks_for(F, kThreads), kThreads, 0, stream>>>(
        verts.data_ptr<T>(), faces.data_ptr<int64_t>(), F, geom.data_ptr<double>());
    const int64_t kc = chunk_size<T>(V, K);
    at::Tensor storage =
        at::empty({V * kc * int64_t(2 * sizeof(T) + sizeof(Cplx<T>))}, verts.options().dtype(at::kByte));
    Tables<T> tab = make_tables<T>(storage, V, kc);
    const auto* pg = reinterpret_cast<const Cplx<T>*>(grad_out.data_ptr<c10::complex<T>>());
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t kn = std::min(kc, K - k0);
      vertex_tables_kernel<T><<<blocks_for(V * kn, 256), 256, 0, stream>>>(
          verts.data_ptr<T>(), freqs.data_ptr<T>(), V, k0, kn, tab);
      backward_faces_kernel<T><<<blocks_for(F * 32, kThreads), kThreads, 0, stream>>>(
          faces.data_ptr<int64_t>(), geom.data_ptr<double>(), F, freqs.data_ptr<T>(), pg, k0, kn,
          tab, acc.data_ptr<double>());
    }
    backward_gather_kernel<T><<<blocks_for(F, kThreads), kThreads, 0, stream>>>(
        faces.data_ptr<int64_t>(), weights.data_ptr<T>(), geom.data_ptr<double>(),
        acc.data_ptr<double>(), F, gv.data_ptr<double>(), grad_weights.data_ptr<T>());
    check_launch();
  });
  return {gv.to(verts.scalar_type()), grad_weights};
}

}  // namespace meshft
