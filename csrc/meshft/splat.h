// Real-space splat of triangle quadrature points with a truncated separable Gaussian (CPU).
// The contract (see deltamic_core.render.realspace, the pure-torch reference):
//
//   gauss_forward(tri (F, 3, 3), strength (F,), face_rule (F,) int64, rule_start (R + 1,) int64,
//                 lam (Q, 3) float64, rule_weights (Q,) float64, shape, spacing, origin, sigma,
//                 radius, window, phi_c, norm, block, block_step) -> image (Z, Y, X)
//     image[n] = sum_f sum_{q in rule(f)} strength_f w_q prod_a g_a(x_n,a - y_q,a),
//     y_q = sum_c lam_qc tri_fc, g the truncated Gaussian (GaussianKernel in realspace.py), or,
//     with block[a] = B > 1, the mean of B of them shifted by (m - (B - 1) / 2) block_step[a]
//     (BlockGaussianKernel: a coarse level's block-averaged PSF); radius is the Gaussian's cut.
//   gauss_backward(..., grad (Z, Y, X), ..., need_sigma)
//     -> (grad_tri (F, 3, 3), grad_strength (F,), grad_sigma (3,) float64).
//
//   table_forward(tri, strength, face_rule, rule_start, lam, rule_weights, shape, spacing, origin,
//                 radius, window, q, values [3 x (rank, J) float64], derivs [same], reach (3, rank))
//     the same sum with a low-rank separable PSF h(d) = sum_r f_rz(d_z) f_ry(d_y) f_rx(d_x), each
//     factor the cubic Hermite interpolant of node values and derivatives at -radius + j h / q
//     (splat_table_kernels.h; LowRankTableKernel in realspace.py); table_backward(..., grad, ...)
//     -> (grad_tri, grad_strength).
//
// tri, strength, grad share one float dtype; everything contiguous, on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace splat {

at::Tensor gauss_forward(const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule,
                         const at::Tensor& rule_start, const at::Tensor& lam, const at::Tensor& rw,
                         const std::vector<int64_t>& shape, const std::vector<double>& spacing,
                         const std::vector<double>& origin, const std::vector<double>& sigma,
                         const std::vector<double>& radius, const std::vector<int64_t>& window,
                         double phi_c, double norm, const std::vector<int64_t>& block,
                         const std::vector<double>& block_step);

std::tuple<at::Tensor, at::Tensor, at::Tensor> gauss_backward(
    const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule,
    const at::Tensor& rule_start, const at::Tensor& lam, const at::Tensor& rw, const at::Tensor& grad,
    const std::vector<int64_t>& shape, const std::vector<double>& spacing,
    const std::vector<double>& origin, const std::vector<double>& sigma,
    const std::vector<double>& radius, const std::vector<int64_t>& window, double phi_c, double norm,
    bool need_sigma, const std::vector<int64_t>& block, const std::vector<double>& block_step);

at::Tensor table_forward(const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule,
                         const at::Tensor& rule_start, const at::Tensor& lam, const at::Tensor& rw,
                         const std::vector<int64_t>& shape, const std::vector<double>& spacing,
                         const std::vector<double>& origin, const std::vector<double>& radius,
                         const std::vector<int64_t>& window, const std::vector<int64_t>& q,
                         const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& derivs,
                         const at::Tensor& reach);

std::tuple<at::Tensor, at::Tensor> table_backward(
    const at::Tensor& tri, const at::Tensor& strength, const at::Tensor& face_rule, const at::Tensor& rule_start,
    const at::Tensor& lam, const at::Tensor& rw, const at::Tensor& grad, const std::vector<int64_t>& shape,
    const std::vector<double>& spacing, const std::vector<double>& origin, const std::vector<double>& radius,
    const std::vector<int64_t>& window, const std::vector<int64_t>& q, const std::vector<at::Tensor>& values,
    const std::vector<at::Tensor>& derivs, const at::Tensor& reach);

}  // namespace splat
