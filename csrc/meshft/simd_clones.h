// Two clones of one kernel header in the including translation unit: isa_avx2 (compiled for
// AVX2+FMA by a target pragma, GCC and clang on x86-64 only) and isa_base (portable). The
// caller picks one at run time (meshft::cpu_isa(); DELTAMIC_MESHFT_ISA=baseline forces the
// portable clone, the tests run both).
//
// Usage, inside the caller's namespace (no include guard: once per kernel header):
//   #define DELTAMIC_SIMD_KERNELS "splat_cpu_kernels.h"
//   #include "simd_clones.h"
// DELTAMIC_HAVE_AVX2_CLONE is defined when isa_avx2 exists.

#ifndef DELTAMIC_SIMD_KERNELS
#error "define DELTAMIC_SIMD_KERNELS (the kernel header to clone) before including simd_clones.h"
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define DELTAMIC_HAVE_AVX2_CLONE 1
#if defined(__clang__)
// clang ignores #pragma GCC target; this gives every function in the region (templates and
// lambdas included) the target. clang contracts a*b+c within an expression by default.
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
// -std=c++17 implies -ffp-contract=off; the AVX2 clone may fuse multiply-adds (faster and, if
// anything, more accurate; the baseline clone cannot: no FMA in baseline x86-64).
#pragma GCC optimize("fp-contract=fast")
#endif
namespace isa_avx2 {
#include DELTAMIC_SIMD_KERNELS
}  // namespace isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace isa_base {
#include DELTAMIC_SIMD_KERNELS
}  // namespace isa_base

#undef DELTAMIC_SIMD_KERNELS
