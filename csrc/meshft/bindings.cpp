// Python bindings of deltamic_core._C: argument validation and device dispatch.
// The contract is documented in meshft.h and DEVELOPERS.md.
#include <torch/extension.h>

#include <string>

#include "meshft.h"

namespace {

void check_real(const at::Tensor& t, const char* name, int64_t ndim, int64_t last) {
  TORCH_CHECK_VALUE(t.dim() == ndim && (last < 0 || t.size(ndim - 1) == last), name, " must have shape ",
              ndim == 2 ? "(N, 3)" : "(N,)", ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (call .contiguous())");
}

void check_inputs(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& weights,
                  const at::Tensor& freqs) {
  check_real(verts, "verts", 2, 3);
  check_real(faces, "faces", 2, 3);
  check_real(weights, "weights", 1, -1);
  check_real(freqs, "freqs", 2, 3);
  const auto dt = verts.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble, "verts must be float32 or float64, got ",
              verts.scalar_type());
  TORCH_CHECK_TYPE(weights.scalar_type() == dt, "weights must have the dtype of verts (", dt,
              "), got ", weights.scalar_type());
  TORCH_CHECK_TYPE(freqs.scalar_type() == dt, "freqs must have the dtype of verts (", dt, "), got ",
              freqs.scalar_type());
  TORCH_CHECK_TYPE(faces.scalar_type() == at::kLong, "faces must be int64, got ", faces.scalar_type());
  TORCH_CHECK_VALUE(weights.size(0) == faces.size(0), "weights must have one entry per face (",
              faces.size(0), "), got ", weights.size(0));
  const auto dev = verts.device();
  TORCH_CHECK_VALUE(faces.device() == dev, "faces is on ", faces.device(), " but verts is on ", dev);
  TORCH_CHECK_VALUE(weights.device() == dev, "weights is on ", weights.device(), " but verts is on ",
              dev);
  TORCH_CHECK_VALUE(freqs.device() == dev, "freqs is on ", freqs.device(), " but verts is on ", dev);
  if (faces.numel() > 0) {
    const int64_t lo = faces.min().item<int64_t>();
    const int64_t hi = faces.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < verts.size(0), "faces index out of range: indices span [", lo,
                ", ", hi, "] but there are ", verts.size(0), " vertices");
  }
}

bool on_cuda(const at::Tensor& verts) {
  if (!verts.is_cuda()) {
    TORCH_CHECK(verts.is_cpu(), "verts must be on the CPU or a CUDA device, got ", verts.device());
    return false;
  }
#ifdef WITH_CUDA
  return true;
#else
  TORCH_CHECK(false, "deltamic_core._C was built without CUDA support (rebuild with ",
              "DELTAMIC_WITH_CUDA=1) or move the tensors to the CPU");
  return false;
#endif
}

at::Tensor meshft_forward(const at::Tensor& verts, const at::Tensor& faces,
                          const at::Tensor& weights, const at::Tensor& freqs) {
  check_inputs(verts, faces, weights, freqs);
  if (on_cuda(verts)) {
#ifdef WITH_CUDA
    return meshft::forward_cuda(verts, faces, weights, freqs);
#endif
  }
  return meshft::forward_cpu(verts, faces, weights, freqs);
}

std::tuple<at::Tensor, at::Tensor> meshft_backward(const at::Tensor& verts,
                                                   const at::Tensor& faces,
                                                   const at::Tensor& weights,
                                                   const at::Tensor& freqs,
                                                   const at::Tensor& grad_out) {
  check_inputs(verts, faces, weights, freqs);
  const auto want = verts.scalar_type() == at::kDouble ? at::kComplexDouble : at::kComplexFloat;
  TORCH_CHECK_VALUE(grad_out.dim() == 1 && grad_out.size(0) == freqs.size(0),
              "grad_out must have shape (K,) with K = ", freqs.size(0), ", got ",
              grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == want, "grad_out must be ", want, " for ",
              verts.scalar_type(), " inputs, got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.is_contiguous(), "grad_out must be contiguous (call .contiguous())");
  TORCH_CHECK_VALUE(grad_out.device() == verts.device(), "grad_out is on ", grad_out.device(),
              " but verts is on ", verts.device());
  if (on_cuda(verts)) {
#ifdef WITH_CUDA
    return meshft::backward_cuda(verts, faces, weights, freqs, grad_out);
#endif
  }
  return meshft::backward_cpu(verts, faces, weights, freqs, grad_out);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native kernels of the deltamic mesh Fourier transform (see DEVELOPERS.md).";
  m.def("meshft_forward", &meshft_forward, py::arg("verts"), py::arg("faces"), py::arg("weights"),
        py::arg("freqs"),
        "U(k) = sum_t w_t * integral_t exp(-2 pi i k.x) dS for verts (V,3) um, faces (F,3) int64, "
        "weights (F,), freqs (K,3) cycles/um -> complex (K,).");
  m.def("meshft_backward", &meshft_backward, py::arg("verts"), py::arg("faces"),
        py::arg("weights"), py::arg("freqs"), py::arg("grad_out"),
        "(grad_verts (V,3), grad_weights (F,)) with grad = Re(sum_k conj(grad_out_k) dU_k/dtheta).");
  m.def("cpu_isa", &meshft::cpu_isa,
        "The clone of the CPU kernels in use: 'avx2+fma' or 'baseline' (DELTAMIC_MESHFT_ISA=baseline).");
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
