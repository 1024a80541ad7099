// Per-element math of the mesh Fourier transform, shared by the CPU and CUDA kernels.
//
// The transform of a triangle (a, b, c) with area A at the frequency k (cycles/um) is
//     integral_T exp(-2 pi i k.x) dS = 2 A f[pa, pb, pc],   pa = 2 pi k.a (radians),
// with f(z) = -exp(-i z) and f[., ., .] its second divided difference (Hermite-Genocchi:
// the mean of f'' = exp(-i z) over the triangle, times the simplex volume 1/2). The vertex
// gradient needs d f[pa, pb, pc] / d pa = f[pa, pa, pb, pc], a third divided difference with a
// repeated node, plus the gradient of the area.
//
// Everything here works on the phases RELATIVE to the first corner, p = pb - pa and
// q = pc - pa (small numbers: a triangle is small compared to a wavelength or a few of them),
// together with the per-vertex exponentials Ea = exp(-i pa), Eb, Ec. The caller computes those
// once per vertex and frequency in double precision (a mesh has about half as many vertices as
// faces, and the absolute phases reach hundreds of radians, which float cannot reduce
// accurately); a divided difference of exp(-i z) is translation-covariant,
// f[pa + x, pa + y, pa + z] = Ea f[x, y, z], so the relative phases carry all the cancellation.
//
// Two regimes, chosen per (face, frequency) so that both meet the accuracy target:
//  * spread max(|p|, |q|, |p - q|) < kSpread: Taylor series about pa,
//        f[0, p, q]       =      sum_m (-i)^m h_m(p, q)       / (m + 2)!
//        f[0, 0, p, q]    = -i * sum_m (-i)^m h_m(p, q)       / (m + 3)!
//        f[0, p, p, q]    = -i * sum_m (-i)^m h_m(p, p, q)    / (m + 3)!
//    with h_m the complete homogeneous symmetric polynomials (zero nodes drop out); all real
//    arithmetic, no transcendental function, no cancellation.
//  * larger spread: recursive divided differences that only ever divide by a difference of
//    order of the spread: for the nodes sorted, x0 <= x1 <= x2 (the median is in the closest
//    pair),
//        f[x0, x1, x2] = (f[x0, x1] - f[x1, x2]) / (x0 - x2),  |x0 - x2| = spread,
//    with f[x, y] = (Ex - Ey) / (y - x) or, when |y - x| < kPair, Ex times its series; and
//        f[x, x, y, z] = (f[x, x, y] - f[x, y, z]) / (x - z)  with |x - z| >= |x - y|.
//    The absolute error is a few eps (relative to f(0) = 1/2) instead of the eps / (d1 d2) of
//    the textbook closed form.
//
// The header compiles as plain C++ (g++) and as CUDA (nvcc): MESHFT_HD expands to
// __host__ __device__ only under nvcc, so the CPU tests exercise exactly the CUDA math.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define MESHFT_HD __host__ __device__
#define MESHFT_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define MESHFT_HD
#define MESHFT_UNROLL _Pragma("GCC unroll 32")
#else
#define MESHFT_HD
#define MESHFT_UNROLL
#endif

namespace meshft {

// Minimal complex type: std::complex is not usable in device code, c10::complex drags in
// torch headers; the kernels only need a handful of operations.
template <typename T>
struct Cplx {
  T re;
  T im;
};

template <typename T>
MESHFT_HD inline Cplx<T> cmul(Cplx<T> a, Cplx<T> b) {
  return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
// Re(h a)
template <typename T>
MESHFT_HD inline T re_mul(Cplx<T> h, Cplx<T> a) { return h.re * a.re - h.im * a.im; }

// 1 / n! for n = 0..27 (correctly rounded doubles).
MESHFT_HD inline double inv_factorial(int n) {
  switch (n) {
    case 0: return 1.0;
    case 1: return 1.0;
    case 2: return 0.5;
    case 3: return 0.16666666666666666;
    case 4: return 0.041666666666666664;
    case 5: return 0.008333333333333333;
    case 6: return 0.001388888888888889;
    case 7: return 0.0001984126984126984;
    case 8: return 2.48015873015873e-05;
    case 9: return 2.7557319223985893e-06;
    case 10: return 2.755731922398589e-07;
    case 11: return 2.505210838544172e-08;
    case 12: return 2.08767569878681e-09;
    case 13: return 1.6059043836821613e-10;
    case 14: return 1.1470745597729725e-11;
    case 15: return 7.647163731819816e-13;
    case 16: return 4.779477332387385e-14;
    case 17: return 2.8114572543455206e-15;
    case 18: return 1.5619206968586225e-16;
    case 19: return 8.22063524662433e-18;
    case 20: return 4.110317623312165e-19;
    case 21: return 1.9572941063391263e-20;
    case 22: return 8.896791392450574e-22;
    case 23: return 3.868170170630684e-23;
    case 24: return 1.6117375710961184e-24;
    case 25: return 6.446950284384474e-26;
    case 26: return 2.4795962632247976e-27;
    default: return 9.183689863795546e-29;
  }
}

// Regime switches and series lengths per compute precision. A series in h_m(p, q) with
// |p|, |q| < s has terms bounded by C(m + 2, 2) s^m / (m + 2)!, so the truncation index is
// where that falls below the unit roundoff; the closed forms lose about eps / s^2.
template <typename T>
struct Tuning;

template <>
struct Tuning<float> {
  // triangle series below this: 14 terms reach r = 2.11 (SeriesLength), and in float the
  // series is the more accurate regime there (measured against mpmath at spreads 1.4-2.1: 0.36
  // of the test's bound, the recursion 0.67). 1.5 before: then most pairs of the large-spread
  // benchmark (edges up to ~2 rad of phase) took the costlier recursion.
  MESHFT_HD static constexpr float spread() { return 2.1f; }
  MESHFT_HD static constexpr float pair() { return 1.0f; }    // pair series below this
  static constexpr int kTriTerms = 14;   // m = 0..13 of the triangle series
  static constexpr int kPairTerms = 11;  // powers 0..10 of the pair series
};

template <>
struct Tuning<double> {
  MESHFT_HD static constexpr double spread() { return 1.5; }
  MESHFT_HD static constexpr double pair() { return 1.0; }
  static constexpr int kTriTerms = 24;
  static constexpr int kPairTerms = 19;
};

// Shorter series for smaller nodes. With r = max(|p|, |q|), h_m(p, q) <= (m + 1) r^m, so the
// first omitted term of f[0, p, q] is at most (N + 1) r^N / (N + 2)! (those of f[0, 0, p, q] and
// f[p, p, 0, q] are smaller: (N + 1) / (N + 3)! and (N + 1)(N + 2) / 2 / (N + 3)!), and the
// rest of the tail adds less than 10%. SeriesLength<T>::kMaxR[i] is the largest r for which
// kTerms[i] terms keep that below half an ulp of f(0) = 1/2 (2^-25 for float, 2^-54 for
// double), rounded down; the last entry covers every r below the regime switch (r <= spread).
// The CPU kernels pick the length per (face, tile of frequencies) from the tile's largest r.
template <typename T>
struct SeriesLength;

template <>
struct SeriesLength<float> {
  static constexpr int kCount = 6;
  static constexpr int kTerms[kCount] = {6, 8, 10, 12, 13, 14};
  MESHFT_HD static constexpr float max_r(int i) {
    return i == 0 ? 0.23f : (i == 1 ? 0.56f : (i == 2 ? 1.01f : (i == 3 ? 1.54f : (i == 4 ? 1.82f : 2.11f))));
  }
};

template <>
struct SeriesLength<double> {
  static constexpr int kCount = 4;
  static constexpr int kTerms[kCount] = {10, 14, 18, 22};
  MESHFT_HD static constexpr double max_r(int i) {
    return i == 0 ? 0.136 : (i == 1 ? 0.505 : (i == 2 ? 1.109 : 1.90));
  }
};

template <typename T>
MESHFT_HD inline T tabs(T x) { return x < T(0) ? -x : x; }

template <typename T>
MESHFT_HD inline T spread3(T p, T q) {
  const T ap = tabs(p), aq = tabs(q), apq = tabs(p - q);
  T s = ap > aq ? ap : aq;
  return s > apq ? s : apq;
}

// ---------------------------------------------------------------------------------------
// Series kernels (relative nodes, no exponential factor).

// f[0, d] = (1 - exp(-i d)) / d = ((1 - cos d) / d, sin(d) / d)
//         = i sum_n (-i)^n d^n / (n + 1)!
// N: number of terms (the default suits arithmetic and accuracy in T; the CPU float kernels
// evaluate it in double with the float length).
template <typename T, int N = Tuning<T>::kPairTerms>
MESHFT_HD inline Cplx<T> pair_series(T d) {
  const T d2 = d * d;
  // Two Horner chains in d^2: the real part collects the odd powers d^n / (n + 1)! (the
  // chain drops one factor d, restored at the end), the imaginary part the even powers; both
  // alternate in sign starting from +.
  T re = T(0), im = T(0);
  MESHFT_UNROLL
  for (int n = N - 1; n >= 0; --n) {
    const T c = T(inv_factorial(n + 1));
    const T sgn = ((n >> 1) & 1) ? T(-1) : T(1);
    if (n & 1) {
      re = re * d2 + sgn * c;  // accumulates odd n; the final * d below restores the power
    } else {
      im = im * d2 + sgn * c;
    }
  }
  return {re * d, im};
}

// f[0, 0, d] = sum_n (-i)^n d^n / (n + 2)!, for f[x, x, y] with |x - y| small.
template <typename T>
MESHFT_HD inline Cplx<T> pair2_series(T d) {
  constexpr int N = Tuning<T>::kPairTerms;
  const T d2 = d * d;
  T re = T(0), im = T(0);
  MESHFT_UNROLL
  for (int n = N - 1; n >= 0; --n) {
    const T c = T(inv_factorial(n + 2));
    if (n & 1) {
      // (-i)^n for odd n: n = 1 -> -i, n = 3 -> +i
      const T sgn = ((n >> 1) & 1) ? T(1) : T(-1);
      im = im * d2 + sgn * c;
    } else {
      const T sgn = ((n >> 1) & 1) ? T(-1) : T(1);
      re = re * d2 + sgn * c;
    }
  }
  return {re, im * d};
}

// f[0, p, q] by its Taylor series (forward only), N terms (m = 0..N-1).
template <typename T, int N = Tuning<T>::kTriTerms>
MESHFT_HD inline Cplx<T> tri_series(T p, T q) {
  const T e1 = p + q, e2 = p * q;
  T hm2 = T(1), hm1 = e1;  // h_0, h_1
  T re = T(inv_factorial(2));
  T im = -e1 * T(inv_factorial(3));
  MESHFT_UNROLL
  for (int m = 2; m < N; ++m) {
    const T h = e1 * hm1 - e2 * hm2;
    const T t = h * T(inv_factorial(m + 2));
    switch (m & 3) {
      case 0: re += t; break;
      case 1: im -= t; break;
      case 2: re -= t; break;
      default: im += t; break;
    }
    hm2 = hm1;
    hm1 = h;
  }
  return {re, im};
}

// (-i)^m accumulation helper for the series sums.
template <typename T>
MESHFT_HD inline void acc_negi_pow(int m, T t, T& re, T& im) {
  switch (m & 3) {
    case 0: re += t; break;
    case 1: im -= t; break;
    case 2: re -= t; break;
    default: im += t; break;
  }
}

// F0 = f[0,p,q], Fa = f[0,0,p,q], Fb = f[p,p,0,q] by series (relative to exp(-i pa)); the third
// corner follows from translation invariance, Fa + Fb + Fc = -i F0, which saves a quarter of
// the work.
template <typename T, int N = Tuning<T>::kTriTerms>
MESHFT_HD inline void tri_series_grad_ab(T p, T q, Cplx<T>& F0, Cplx<T>& Fa, Cplx<T>& Fb) {
  const T e1 = p + q, e2 = p * q;
  T h = T(1), hm1 = T(0), hb = T(1);
  T s2r = T(inv_factorial(2)), s2i = T(0);
  T sar = T(inv_factorial(3)), sai = T(0);
  T sbr = sar, sbi = T(0);
  MESHFT_UNROLL
  for (int m = 1; m < N; ++m) {
    const T hn = e1 * h - e2 * hm1;
    hm1 = h;
    h = hn;
    hb = h + p * hb;
    const T c2 = T(inv_factorial(m + 2)), c3 = T(inv_factorial(m + 3));
    acc_negi_pow(m, h * c2, s2r, s2i);
    acc_negi_pow(m, h * c3, sar, sai);
    acc_negi_pow(m, hb * c3, sbr, sbi);
  }
  F0 = {s2r, s2i};
  Fa = {sai, -sar};
  Fb = {sbi, -sbr};
}

// ---------------------------------------------------------------------------------------
// Divided differences with exponentials (large spread), written with selects instead of
// branches so that loops over frequencies vectorise on the CPU (and warps do not diverge on the
// GPU): both sides of each choice are computed and one is kept (the unused one may be inf or
// nan; it is discarded, and nothing traps: the CPU build uses -fno-trapping-math so that the
// compiler may evaluate a division whose result is discarded).
//  * the three nodes are sorted by a network of compare-exchanges; for sorted x0 <= x1 <= x2
//    the median is in the closest pair, so f[x0, x1, x2] = (f[x0, x1] - f[x1, x2]) / (x0 - x2)
//    divides only by the full spread (>= the regime switch);
//  * f[x, y] is Ex times the pair series below the pair switch, else (Ex - Ey) / (y - x);
//  * f[x, x, y, z] = (f[x, x, y] - f[x, y, z]) / (x - z) with z the node farther from x (at
//    least half the spread away), f[x, x, y] by its series or (f[x, y] - i Ex) / (y - x).
// The absolute error is a few eps (relative to f(0) = 1/2) instead of the eps / (d1 d2) of the
// textbook closed form.

template <typename U>
MESHFT_HD inline void cswap_nodes(U& x, Cplx<U>& Ex, U& y, Cplx<U>& Ey) {
  const bool sw = x > y;
  const U lo = sw ? y : x, hi = sw ? x : y;
  const Cplx<U> Elo = {sw ? Ey.re : Ex.re, sw ? Ey.im : Ex.im};
  const Cplx<U> Ehi = {sw ? Ex.re : Ey.re, sw ? Ex.im : Ey.im};
  x = lo;
  y = hi;
  Ex = Elo;
  Ey = Ehi;
}

// Three reciprocals for the price of one division (divisions dominate the recursion's cost):
// 1/a = b c / (a b c) etc. The caller replaces by 1 any value whose reciprocal it will discard
// (|x| below the pair switch), so that the product stays >= 1 in magnitude.
template <typename U>
MESHFT_HD inline void reciprocals3(U a, U b, U c, U& ia, U& ib, U& ic) {
  const U ab = a * b;
  const U r = U(1) / (ab * c);
  ia = b * c * r;
  ib = a * c * r;
  ic = ab * r;
}

// f[x, x + d] with the reciprocal inv = 1 / d (only used when |d| >= the pair switch; N terms
// of the pair series below it)
template <typename U, int N = Tuning<U>::kPairTerms>
MESHFT_HD inline Cplx<U> pair_dd(U d, Cplx<U> Ex, Cplx<U> Ey, U inv) {
  const Cplx<U> ser = cmul(Ex, pair_series<U, N>(d));
  const Cplx<U> quo = {(Ex.re - Ey.re) * inv, (Ex.im - Ey.im) * inv};
  const bool near = tabs(d) < U(Tuning<U>::pair());
  return {near ? ser.re : quo.re, near ? ser.im : quo.im};
}

// x, or 1 where |x| < thr (its reciprocal is then not used)
template <typename U>
MESHFT_HD inline U far_or_one(U x, U thr) {
  return tabs(x) < thr ? U(1) : x;
}

// f[0, p, q] for the nodes 0, p, q with exponentials E0, Ep, Eq (absolute or relative to any
// common origin; the result carries the same phase).
template <typename U, int N = Tuning<U>::kPairTerms>
MESHFT_HD inline Cplx<U> dd2_sorted(U p, U q, Cplx<U> E0, Cplx<U> Ep, Cplx<U> Eq) {
  U x0 = U(0), x1 = p, x2 = q;
  cswap_nodes(x0, E0, x1, Ep);
  cswap_nodes(x1, Ep, x2, Eq);
  cswap_nodes(x0, E0, x1, Ep);
  const U d01 = x1 - x0, d12 = x2 - x1, d02 = x0 - x2;  // |d02| = spread >= the switch
  U i01, i12, i02;
  const U pair = Tuning<U>::pair();
  reciprocals3(far_or_one(d01, pair), far_or_one(d12, pair), d02, i01, i12, i02);
  const Cplx<U> f01 = pair_dd<U, N>(d01, E0, Ep, i01);
  const Cplx<U> f12 = pair_dd<U, N>(d12, Ep, Eq, i12);
  return {(f01.re - f12.re) * i02, (f01.im - f12.im) * i02};
}

// f[x, x, x + d] / Ex from the relative exponential Ed = exp(-i d) and inv = 1 / d (only used
// when |d| >= the pair switch): the pair2 series, or (f[0, d] - i) / d with f[0, d] = (1 - Ed) / d.
template <typename U>
MESHFT_HD inline Cplx<U> rep_dd(U d, Cplx<U> Ed, U inv) {
  const Cplx<U> ser = pair2_series<U>(d);
  const U f0d_re = (U(1) - Ed.re) * inv, f0d_im = (-Ed.im) * inv;
  const Cplx<U> quo = {f0d_re * inv, (f0d_im - U(1)) * inv};
  const bool near = tabs(d) < U(Tuning<U>::pair());
  return {near ? ser.re : quo.re, near ? ser.im : quo.im};
}

// F0 = f[0, p, q], Fa = f[0, 0, p, q], Fb = f[p, p, 0, q] for a large spread, from the
// relative exponentials Ep = exp(-i p), Eq = exp(-i q) (results relative to exp(-i pa)).
template <typename U>
MESHFT_HD inline void tri_grad_large(U p, U q, Cplx<U> Ep, Cplx<U> Eq, Cplx<U>& F0, Cplx<U>& Fa,
                                     Cplx<U>& Fb) {
  F0 = dd2_sorted<U>(p, q, Cplx<U>{U(1), U(0)}, Ep, Eq);
  // every divisor below is +-p, +-q or +-(q - p): the farther node is at least half the spread
  // (>= 0.75) away, the nearer one's reciprocal is only used above the pair switch (1), so
  // values below 0.5 may be replaced
  static_assert(Tuning<U>::spread() / 2 > U(0.5) && Tuning<U>::pair() > U(0.5), "see the guard");
  const U qp = q - p, guard = U(0.5);
  U ip, iq, iqp;
  reciprocals3(far_or_one(p, guard), far_or_one(q, guard), far_or_one(qp, guard), ip, iq, iqp);
  {  // corner a = 0: other nodes p, q
    const bool q_far = tabs(q) >= tabs(p);
    const U y = q_far ? p : q;
    const Cplx<U> Ey = {q_far ? Ep.re : Eq.re, q_far ? Ep.im : Eq.im};
    const Cplx<U> r = rep_dd(y, Ey, q_far ? ip : iq);  // f[0, 0, y] (E0 = 1)
    const U inv = q_far ? -iq : -ip;                     // 1 / (0 - z), z the farther node
    Fa = {(r.re - F0.re) * inv, (r.im - F0.im) * inv};
  }
  {  // corner b = p: other nodes 0 and q, at distances p and q - p
    const U d0 = -p;
    const bool q_far = tabs(qp) >= tabs(d0);
    const U y = q_far ? d0 : qp;  // the nearer node, relative to p
    // exp(-i y) relative to p: exp(i p) = conj(Ep), exp(-i (q - p)) = Eq conj(Ep)
    const Cplx<U> Ep_conj = {Ep.re, -Ep.im};
    const Cplx<U> Eqp = cmul(Eq, Ep_conj);
    const Cplx<U> Ey = {q_far ? Ep_conj.re : Eqp.re, q_far ? Ep_conj.im : Eqp.im};
    const Cplx<U> r = cmul(Ep, rep_dd(y, Ey, q_far ? -ip : iqp));  // f[p, p, p + y]
    const U inv = q_far ? -iqp : ip;  // 1 / (p - z): z = q (the farther) or 0
    Fb = {(r.re - F0.re) * inv, (r.im - F0.im) * inv};
  }
}

// ---------------------------------------------------------------------------------------
// Per (face, frequency) entry points (the CUDA kernels use these; the CPU kernels call the
// pieces above lane-wise, see meshft_cpu_kernels.h).

// f[pa, pb, pc] from p = pb - pa, q = pc - pa and the absolute exponentials.
template <typename T>
MESHFT_HD inline Cplx<T> tri_f(T p, T q, Cplx<T> Ea, Cplx<T> Eb, Cplx<T> Ec) {
  if (spread3(p, q) < Tuning<T>::spread()) return cmul(Ea, tri_series(p, q));
  return dd2_sorted<T>(p, q, Ea, Eb, Ec);
}

// The third corner's derivative from translation invariance, Fa + Fb + Fc = -i F0 (the one
// place this identity is written; the series and the recursion only form F0, Fa, Fb).
template <typename T>
MESHFT_HD inline Cplx<T> third_corner(Cplx<T> F0, Cplx<T> Fa, Cplx<T> Fb) {
  return {F0.im - Fa.re - Fb.re, -F0.re - Fa.im - Fb.im};
}

// The per (face, frequency) terms of the backward: with H = conj(G) times whatever phase factor
// F0, Fa, Fb are relative to (CPU: the anchor's exp(-i pa); CUDA: none, H = conj(G)),
// g0 = Re(H F0) and g_corner = Re(H F_corner). Summed over the frequencies, g0 gives R and
// g_corner * k the corner's V in face_grads.
template <typename T>
MESHFT_HD inline void corner_terms(Cplx<T> H, Cplx<T> F0, Cplx<T> Fa, Cplx<T> Fb, T& g0, T& gA,
                                   T& gB, T& gC) {
  g0 = re_mul(H, F0);
  gA = re_mul(H, Fa);
  gB = re_mul(H, Fb);
  gC = re_mul(H, third_corner(F0, Fa, Fb));
}

constexpr double kTwoPi = 6.283185307179586476925286766559;

// Vertex-gradient assembly of one face from its frequency sums: U_t = w 2A f[pa, pb, pc], so
// dU_t/dx_corner = w (2 grad_corner(A) f + 2A f_corner 2 pi k); with R = sum_k Re(conj(G_k) f)
// and V_corner = sum_k Re(conj(G_k) f_corner) k, the gradient w.r.t. corner c, axis d, is
// 2 w R grad_c(A)_d + 2 pi w 2A V_c,d. garea, vsum and out hold 3 corners x 3 axes; returns
// the gradient w.r.t. the weight, 2A R.
MESHFT_HD inline double face_grads(double w, double two_area, double R, const double* garea,
                                   const double* vsum, double* out) {
  const double s_area = 2.0 * w * R;
  const double s_phase = w * two_area * kTwoPi;
  for (int i = 0; i < 9; ++i) out[i] = s_area * garea[i] + s_phase * vsum[i];
  return two_area * R;
}

// f[pa, pb, pc] and its partial derivatives with respect to pa, pb, pc
// (f[pa,pa,pb,pc], f[pb,pb,pa,pc], f[pc,pc,pa,pb]); the third from translation invariance.
template <typename T>
MESHFT_HD inline void tri_f_grad(T p, T q, Cplx<T> Ea, Cplx<T> Eb, Cplx<T> Ec, Cplx<T>& F0,
                                 Cplx<T>& Fa, Cplx<T>& Fb, Cplx<T>& Fc) {
  Cplx<T> s0, sa, sb;
  if (spread3(p, q) < Tuning<T>::spread()) {
    tri_series_grad_ab(p, q, s0, sa, sb);
  } else {
    const Cplx<T> ea_conj = {Ea.re, -Ea.im};
    tri_grad_large(p, q, cmul(Eb, ea_conj), cmul(Ec, ea_conj), s0, sa, sb);
  }
  F0 = cmul(Ea, s0);
  Fa = cmul(Ea, sa);
  Fb = cmul(Ea, sb);
  Fc = third_corner(F0, Fa, Fb);
}

// ---------------------------------------------------------------------------------------
// Geometry (double precision: computed once per face).

// Twice the area and the gradients of the area with respect to each corner:
// grad_a A = |bc| / 2 * (unit in-plane normal of bc pointing towards a) = n_hat x (c - b) / 2.
// A degenerate (zero-area) triangle gets zero area and exactly zero gradients.
MESHFT_HD inline void area_grad(const double a[3], const double b[3], const double c[3],
                                double& two_area, double ga[3], double gb[3], double gc[3]) {
  const double u[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
  const double v[3] = {c[0] - a[0], c[1] - a[1], c[2] - a[2]};
  const double n[3] = {u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2],
                       u[0] * v[1] - u[1] * v[0]};
  const double nn = sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
  two_area = nn;
  if (!(nn > 0.0)) {
    for (int i = 0; i < 3; ++i) ga[i] = gb[i] = gc[i] = 0.0;
    return;
  }
  const double h[3] = {0.5 * n[0] / nn, 0.5 * n[1] / nn, 0.5 * n[2] / nn};
  const double ecb[3] = {c[0] - b[0], c[1] - b[1], c[2] - b[2]};
  const double eac[3] = {a[0] - c[0], a[1] - c[1], a[2] - c[2]};
  const double eba[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
  ga[0] = h[1] * ecb[2] - h[2] * ecb[1];
  ga[1] = h[2] * ecb[0] - h[0] * ecb[2];
  ga[2] = h[0] * ecb[1] - h[1] * ecb[0];
  gb[0] = h[1] * eac[2] - h[2] * eac[1];
  gb[1] = h[2] * eac[0] - h[0] * eac[2];
  gb[2] = h[0] * eac[1] - h[1] * eac[0];
  gc[0] = h[1] * eba[2] - h[2] * eba[1];
  gc[1] = h[2] * eba[0] - h[0] * eba[2];
  gc[2] = h[0] * eba[1] - h[1] * eba[0];
}

// exp(-i phi) of a double phase phi, rounded to T. The reduction is done in double, so phases
// of hundreds of radians keep full T accuracy.
template <typename T>
MESHFT_HD inline Cplx<T> expmi(double phi);

template <>
MESHFT_HD inline Cplx<double> expmi<double>(double phi) {
  return {cos(phi), -sin(phi)};
}

// exp(-i phi) in double by a branch-free polynomial, for vectorised loops (a libm cos/sin call
// does not vectorise): quadrant reduction r = phi - n pi/2 (|r| <= pi/4), Taylor polynomials
// (truncation < 1e-14 on [-pi/4, pi/4]) and the quadrant rotation; about 1e-15 absolute for
// the phases met here. Used for the CPU kernels' anchor and relative exponentials, and (via
// expmi<float>) rounded once to float: within 0.5 float ulp (+1e-14), where a float polynomial
// (~1.6 ulp) would use most of the float accuracy budget (about 2.5 ulp of f(0)).
// phi = n pi/2 + r with |r| <= pi/4, in double; quadrant = n mod 4. Shared by the double
// polynomial below and the CPU backward's float one.
MESHFT_HD inline double quadrant_reduce(double phi, int& quadrant) {
  const double two_over_pi = 0.63661977236758134307553505349006;
  const double pi_over_2 = 1.5707963267948966192313216916398;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const double n = (phi * two_over_pi + shifter) - shifter;
  quadrant = static_cast<int>(n) & 3;
  return phi - n * pi_over_2;
}

// exp(-i phi) from cos(r), sin(r) of the reduced phase and the quadrant.
template <typename U>
MESHFT_HD inline Cplx<U> quadrant_rotate(int q, U c, U s) {
  const U cos_phi = q == 0 ? c : (q == 1 ? -s : (q == 2 ? -c : s));
  const U sin_phi = q == 0 ? s : (q == 1 ? c : (q == 2 ? -s : -c));
  return {cos_phi, -sin_phi};
}

MESHFT_HD inline Cplx<double> expmi_poly(double phi) {
  int q;
  const double r = quadrant_reduce(phi, q);
  const double r2 = r * r;
  double s = 1.0 / 6227020800.0;  // 1/13!
  s = s * r2 - 1.0 / 39916800.0;
  s = s * r2 + 1.0 / 362880.0;
  s = s * r2 - 1.0 / 5040.0;
  s = s * r2 + 1.0 / 120.0;
  s = s * r2 - 1.0 / 6.0;
  s = (s * r2) * r + r;
  double c = 1.0 / 87178291200.0;  // 1/14!
  c = c * r2 - 1.0 / 479001600.0;
  c = c * r2 + 1.0 / 3628800.0;
  c = c * r2 - 1.0 / 40320.0;
  c = c * r2 + 1.0 / 720.0;
  c = c * r2 - 1.0 / 24.0;
  c = c * r2 + 0.5;
  c = 1.0 - c * r2;
  return quadrant_rotate(q, c, s);
}

template <>
MESHFT_HD inline Cplx<float> expmi<float>(double phi) {
  const Cplx<double> e = expmi_poly(phi);
  return {static_cast<float>(e.re), static_cast<float>(e.im)};
}

// exp(-i phi) in T for the backward's large-spread recursion (CPU). For float: the quadrant
// reduction in double (phases of tens of radians), then float polynomials on |r| <= pi/4
// (truncation < 2e-9) in 8-wide vectors: a few float ulp, ample for the 1e-4 gradient
// contract (measured float32 vs float64 gradients stay ~2-4e-7).
template <typename T>
MESHFT_HD inline Cplx<T> expmi_grad(double phi);

template <>
MESHFT_HD inline Cplx<double> expmi_grad<double>(double phi) {
  return expmi_poly(phi);
}

template <>
MESHFT_HD inline Cplx<float> expmi_grad<float>(double phi) {
  int q;
  const float r = float(quadrant_reduce(phi, q));
  const float r2 = r * r;
  float sn = 1.0f / 362880.0f;  // 1/9!
  sn = sn * r2 - 1.0f / 5040.0f;
  sn = sn * r2 + 1.0f / 120.0f;
  sn = sn * r2 - 1.0f / 6.0f;
  sn = (sn * r2) * r + r;
  float cs = 1.0f / 3628800.0f;  // 1/10!
  cs = cs * r2 - 1.0f / 40320.0f;
  cs = cs * r2 + 1.0f / 720.0f;
  cs = cs * r2 - 1.0f / 24.0f;
  cs = cs * r2 + 0.5f;
  cs = 1.0f - cs * r2;
  return quadrant_rotate(q, cs, sn);
}

// exp(-i pa) of an anchor (CPU kernels), in double even for T = float: the float accuracy
// contract (3e-7 |U(0)|, about 2.5 float ulp of f(0) = 1/2) cannot afford a rounded
// exp(-i pa) times a rounded series times a float complex product. For float the branch-free
// double polynomial (vectorises); for double the libm functions.
template <typename T>
MESHFT_HD inline Cplx<double> expmi_anchor(double ph) {
  return expmi_poly(ph);
}
template <>
MESHFT_HD inline Cplx<double> expmi_anchor<double>(double ph) {
  return expmi<double>(ph);
}

// A double phase carried as two T values (the CUDA vertex tables): hi = T(phi) and the
// remainder lo. A relative phase (hi_b - hi_a) + (lo_b - lo_a): the first difference is exact
// when the phases are close (Sterbenz) and otherwise rounds at the level of the difference
// itself, so no double arithmetic is needed per face.
template <typename T>
struct SplitPhase {
  T hi;
  T lo;
};

template <typename T>
MESHFT_HD inline SplitPhase<T> split_phase(double phi) {
  const T hi = T(phi);
  return {hi, T(phi - double(hi))};
}

template <typename T>
MESHFT_HD inline T rel_phase(SplitPhase<T> a, SplitPhase<T> b) {
  return (b.hi - a.hi) + (b.lo - a.lo);
}

}  // namespace meshft
