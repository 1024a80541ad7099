// Python bindings of deltamic_core._C: argument validation and device dispatch.
// The contract is documented in meshft.h and DEVELOPERS.md.
#include <torch/extension.h>

#include <string>

#include "meshft.h"
#include "meshft_math.h"
#include "splat.h"

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

// Test-only: the per (face, frequency) entry points of the CUDA kernels, tri_f and tri_f_grad,
// run on the CPU exactly as the CUDA kernels call them (phases split into two T values,
// relative phases from those, absolute exponentials rounded to T), so that the code a GPU
// would run is checked against the mpmath reference (tests/test_meshft_cuda_math.py).
template <typename T>
void tri_f_reference_impl(const double* ph, int64_t n, c10::complex<double>* f,
                          c10::complex<double>* grads) {
  using meshft::Cplx;
  const auto out = [](Cplx<T> z) { return c10::complex<double>(double(z.re), double(z.im)); };
  for (int64_t i = 0; i < n; ++i) {
    const double pa = ph[3 * i], pb = ph[3 * i + 1], pc = ph[3 * i + 2];
    const meshft::SplitPhase<T> sa = meshft::split_phase<T>(pa), sb = meshft::split_phase<T>(pb),
                                sc = meshft::split_phase<T>(pc);
    const T p = meshft::rel_phase(sa, sb), q = meshft::rel_phase(sa, sc);
    const Cplx<T> ea = meshft::expmi<T>(pa), eb = meshft::expmi<T>(pb), ec = meshft::expmi<T>(pc);
    f[i] = out(meshft::tri_f<T>(p, q, ea, eb, ec));
    Cplx<T> f0, fa, fb, fc;
    meshft::tri_f_grad<T>(p, q, ea, eb, ec, f0, fa, fb, fc);
    grads[4 * i] = out(f0);
    grads[4 * i + 1] = out(fa);
    grads[4 * i + 2] = out(fb);
    grads[4 * i + 3] = out(fc);
  }
}

std::tuple<at::Tensor, at::Tensor> tri_f_reference(const at::Tensor& phases, bool double_precision) {
  TORCH_CHECK_VALUE(phases.dim() == 2 && phases.size(1) == 3 && phases.is_cpu() &&
                        phases.scalar_type() == at::kDouble,
                    "phases must be a CPU float64 tensor of shape (N, 3)");
  const at::Tensor ph = phases.contiguous();
  const int64_t n = ph.size(0);
  at::Tensor f = at::empty({n}, ph.options().dtype(at::kComplexDouble));
  at::Tensor grads = at::empty({n, 4}, ph.options().dtype(at::kComplexDouble));
  auto* pf = f.data_ptr<c10::complex<double>>();
  auto* pg = grads.data_ptr<c10::complex<double>>();
  if (double_precision) {
    tri_f_reference_impl<double>(ph.data_ptr<double>(), n, pf, pg);
  } else {
    tri_f_reference_impl<float>(ph.data_ptr<double>(), n, pf, pg);
  }
  return {f, grads};
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
  m.def("_tri_f_reference", &tri_f_reference, py::arg("phases"), py::arg("double_precision"),
        "Test-only: the CUDA kernels' per-element math (tri_f, tri_f_grad of meshft_math.h) run on "
        "the CPU for absolute phases (N, 3) float64 (pa, pb, pc, radians), in float64 or float32. "
        "Returns f[pa, pb, pc] (N,) and (F0, Fa, Fb, Fc) (N, 4), complex128.");
  m.def("splat_gauss_forward", &splat::gauss_forward, py::arg("tri"), py::arg("strength"),
        py::arg("face_rule"), py::arg("rule_start"), py::arg("lam"), py::arg("rule_weights"),
        py::arg("shape"), py::arg("spacing"), py::arg("origin"), py::arg("sigma"), py::arg("radius"),
        py::arg("window"), py::arg("phi_c"), py::arg("norm"),
        py::arg("block") = std::vector<int64_t>{1, 1, 1}, py::arg("block_step") = std::vector<double>{0.0, 0.0, 0.0},
        "Real-space route, Gaussian PSF: triangle quadrature points splatted on the voxel "
        "centres (see splat.h and deltamic_core.render.realspace).");
  m.def("splat_gauss_backward", &splat::gauss_backward, py::arg("tri"), py::arg("strength"),
        py::arg("face_rule"), py::arg("rule_start"), py::arg("lam"), py::arg("rule_weights"),
        py::arg("grad"), py::arg("shape"), py::arg("spacing"), py::arg("origin"), py::arg("sigma"),
        py::arg("radius"), py::arg("window"), py::arg("phi_c"), py::arg("norm"),
        py::arg("need_sigma"), py::arg("block") = std::vector<int64_t>{1, 1, 1},
        py::arg("block_step") = std::vector<double>{0.0, 0.0, 0.0},
        "Adjoint of splat_gauss_forward: (grad_tri, grad_strength, grad_sigma float64).");
  m.def("splat_table_forward", &splat::table_forward, py::arg("tri"), py::arg("strength"),
        py::arg("face_rule"), py::arg("rule_start"), py::arg("lam"), py::arg("rule_weights"),
        py::arg("shape"), py::arg("spacing"), py::arg("origin"), py::arg("radius"), py::arg("window"),
        py::arg("q"), py::arg("values"), py::arg("derivs"), py::arg("reach"),
        "Real-space route, low-rank separable table PSF (sum of rank products of per-axis cubic "
        "Hermite tables; see splat.h and deltamic_core.render.realspace.LowRankTableKernel).");
  m.def("splat_table_backward", &splat::table_backward, py::arg("tri"), py::arg("strength"),
        py::arg("face_rule"), py::arg("rule_start"), py::arg("lam"), py::arg("rule_weights"),
        py::arg("grad"), py::arg("shape"), py::arg("spacing"), py::arg("origin"), py::arg("radius"),
        py::arg("window"), py::arg("q"), py::arg("values"), py::arg("derivs"), py::arg("reach"),
        "Adjoint of splat_table_forward: (grad_tri, grad_strength).");
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
