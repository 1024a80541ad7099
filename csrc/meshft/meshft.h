// Native mesh Fourier transform: the op's contract and the per-device entry points.
//
//   meshft_forward(verts (V, 3), faces (F, 3) int64, weights (F,), freqs (K, 3)) -> U (K,)
//     U(k) = sum_t w_t * integral over triangle t of exp(-2 pi i k.x) dS
//     verts in um, freqs in cycles/um (same axis order), U complex64 for float32 inputs and
//     complex128 for float64 inputs.
//   meshft_backward(verts, faces, weights, freqs, grad_out (K,) complex)
//     -> (grad_verts (V, 3), grad_weights (F,)), real, the dtype of verts, with PyTorch's
//     convention for a complex output of real inputs: grad_theta = Re(sum_k conj(G_k) dU_k/dtheta).
//
// verts, weights and freqs share one float dtype; every tensor is contiguous and on one device.
// Validation happens in bindings.cpp; the functions below assume valid input.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace meshft {

at::Tensor forward_cpu(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& weights,
                       const at::Tensor& freqs);
std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& verts, const at::Tensor& faces,
                                                const at::Tensor& weights, const at::Tensor& freqs,
                                                const at::Tensor& grad_out);
// Which compiled clone of the CPU kernels runs: "avx2+fma" or "baseline"
// (DELTAMIC_MESHFT_ISA=baseline forces the latter).
const char* cpu_isa();

#ifdef WITH_CUDA
at::Tensor forward_cuda(const at::Tensor& verts, const at::Tensor& faces,
                        const at::Tensor& weights, const at::Tensor& freqs);
std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& verts, const at::Tensor& faces,
                                                 const at::Tensor& weights,
                                                 const at::Tensor& freqs,
                                                 const at::Tensor& grad_out);
#endif

}  // namespace meshft
