// Loops of the CPU kernels. Deliberately WITHOUT an include guard and without includes:
// meshft_cpu.cpp includes this file twice, into namespaces compiled for AVX2+FMA and for the
// baseline x86-64 ISA, and picks one at run time. The source is identical; the AVX2 clone may
// contract a * b + c into fused multiply-adds, so the two differ by roundings (both meet the
// accuracy contracts; tests run both).

constexpr int64_t kTile = 64;  // frequencies per tile (lanes)

static_assert(SeriesLength<float>::max_r(SeriesLength<float>::kCount - 1) >= Tuning<float>::spread(),
              "the longest float series must cover the whole series regime");
static_assert(SeriesLength<double>::max_r(SeriesLength<double>::kCount - 1) >= Tuning<double>::spread(),
              "the longest double series must cover the whole series regime");

// Per-face geometry in double: corner indices, edge vectors from the first corner, twice the
// area and the area gradients.
struct FaceGeom {
  int64_t a, b, c;
  double e1[3], e2[3];  // b - a, c - a (exact in double for float vertices)
  double two_area;
  double garea[3][3];  // gradients of A (not 2A) w.r.t. each corner (a, b, c)
};

// What the hot loops read of a face, one cache line each, stored in the order the loops visit
// the faces (grouped by anchor): streaming them is cheap, whereas gathering the 128-byte
// FaceGeom records through the group's index list missed the cache on every face (the
// forward reads all faces once per tile).
struct alignas(64) FaceEdges {
  double e1[3], e2[3];
  double s;  // forward: w * 2A
};

template <typename T>
inline void set_edges(const T* verts, FaceGeom& g) {
  for (int d = 0; d < 3; ++d) {
    const double a = double(verts[3 * g.a + d]);
    g.e1[d] = double(verts[3 * g.b + d]) - a;
    g.e2[d] = double(verts[3 * g.c + d]) - a;
  }
}

// Geometry of every face in its given corner order.
template <typename T>
std::vector<FaceGeom> face_geometry(const T* verts, const int64_t* faces, int64_t F) {
  std::vector<FaceGeom> geom(static_cast<size_t>(F));
  at::parallel_for(0, F, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      FaceGeom& g = geom[t];
      g.a = faces[3 * t];
      g.b = faces[3 * t + 1];
      g.c = faces[3 * t + 2];
      double a[3], b[3], c[3];
      for (int d = 0; d < 3; ++d) {
        a[d] = double(verts[3 * g.a + d]);
        b[d] = double(verts[3 * g.b + d]);
        c[d] = double(verts[3 * g.c + d]);
      }
      area_grad(a, b, c, g.two_area, g.garea[0], g.garea[1], g.garea[2]);
      set_edges(verts, g);
    }
  });
  return geom;
}

// Rotates each face's corners cyclically by rot[t] (which keeps the orientation and the area)
// so that its anchor comes first; see choose_anchors.
template <typename T>
void rotate_to_anchors(const T* verts, const std::vector<uint8_t>& rot, std::vector<FaceGeom>& geom) {
  const int64_t F = static_cast<int64_t>(geom.size());
  at::parallel_for(0, F, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      FaceGeom& g = geom[t];
      for (int r = 0; r < rot[t]; ++r) {  // (a, b, c) -> (b, c, a)
        const int64_t a = g.a;
        g.a = g.b;
        g.b = g.c;
        g.c = a;
        for (int d = 0; d < 3; ++d) {
          const double ga = g.garea[0][d];
          g.garea[0][d] = g.garea[1][d];
          g.garea[1][d] = g.garea[2][d];
          g.garea[2][d] = ga;
        }
      }
      if (rot[t] != 0) set_edges(verts, g);
    }
  });
}

// Few anchors, many faces each: the anchor's exponentials cost as much as a few faces' series.
// Greedy cover: vertices by decreasing number of faces; a vertex becomes an anchor if one of
// its faces has no anchor yet, and takes all such faces. On a regular triangulation about a
// third of the vertices become anchors, with ~6 faces each (vs ~2 per first corner). Returns
// the rotation of each face that puts its anchor first. Only the faces kept count (so that
// faces which contribute nothing change nothing, not even roundings). Deterministic.
template <typename Keep>
std::vector<uint8_t> choose_anchors(const int64_t* faces, int64_t F, int64_t V, Keep keep) {
  std::vector<int64_t> deg(static_cast<size_t>(V) + 1, 0);
  for (int64_t i = 0; i < 3 * F; ++i)
    if (keep(i / 3)) ++deg[faces[i] + 1];
  std::vector<int64_t> order(static_cast<size_t>(V));
  for (int64_t v = 0; v < V; ++v) order[v] = v;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return deg[x + 1] > deg[y + 1]; });
  for (int64_t v = 0; v < V; ++v) deg[v + 1] += deg[v];  // CSR offsets of vertex -> faces
  std::vector<int64_t> inc(static_cast<size_t>(3 * F));
  std::vector<int64_t> next(deg.begin(), deg.end() - 1);
  for (int64_t i = 0; i < 3 * F; ++i)
    if (keep(i / 3)) inc[next[faces[i]]++] = i;  // face corner slots
  std::vector<uint8_t> rot(static_cast<size_t>(F), 0);
  std::vector<char> done(static_cast<size_t>(F), 0);
  for (const int64_t v : order) {
    for (int64_t s = deg[v]; s < deg[v + 1]; ++s) {
      const int64_t t = inc[s] / 3;
      if (done[t]) continue;
      done[t] = 1;
      rot[t] = uint8_t(inc[s] % 3);
    }
  }
  return rot;
}

// The faces that take part, ordered by their first corner (the "anchor"): a face's value is
// exp(-i phi_a) times a function of its relative phases only, so the faces sharing an anchor
// are summed first and multiplied by the anchor's exponential once. The relative phases come
// from the edge vectors, so no per-vertex table is read in the hot loop (the tables of the
// previous kernels were megabytes, read in mesh order: cache misses dominated).
struct AnchorGroups {
  std::vector<int64_t> face;   // face indices, grouped by anchor (stable within a group)
  std::vector<int64_t> start;  // group g is face[start[g] .. start[g + 1])
  std::vector<FaceEdges> edges;  // edges[i]: the edge vectors of face[i] (s left to the caller)
  std::vector<double> anchor;    // (x, y, z) of group g's anchor vertex at 3 g
};

template <typename T, typename Keep>
AnchorGroups group_by_anchor(const T* verts, const std::vector<FaceGeom>& geom, int64_t V, Keep keep) {
  AnchorGroups G;
  std::vector<int64_t> count(static_cast<size_t>(V) + 1, 0);
  const int64_t F = static_cast<int64_t>(geom.size());
  for (int64_t t = 0; t < F; ++t)
    if (keep(t)) ++count[geom[t].a + 1];
  for (int64_t v = 0; v < V; ++v) count[v + 1] += count[v];
  G.face.resize(static_cast<size_t>(count[V]));
  std::vector<int64_t> next(count.begin(), count.end() - 1);
  for (int64_t t = 0; t < F; ++t)
    if (keep(t)) G.face[next[geom[t].a]++] = t;
  for (int64_t v = 0; v < V; ++v)
    if (count[v + 1] > count[v]) G.start.push_back(count[v]);
  G.start.push_back(count[V]);
  G.edges.resize(G.face.size());
  for (size_t i = 0; i < G.face.size(); ++i) {
    const FaceGeom& g = geom[G.face[i]];
    FaceEdges& e = G.edges[i];
    for (int d = 0; d < 3; ++d) {
      e.e1[d] = g.e1[d];
      e.e2[d] = g.e2[d];
    }
    e.s = 0.0;
  }
  const int64_t n_groups = static_cast<int64_t>(G.start.size()) - 1;
  G.anchor.resize(static_cast<size_t>(3 * n_groups));
  for (int64_t gi = 0; gi < n_groups; ++gi) {
    const int64_t a = geom[G.face[G.start[gi]]].a;
    for (int d = 0; d < 3; ++d) G.anchor[3 * gi + d] = double(verts[3 * a + d]);
  }
  return G;
}

// 2 pi k of one tile in double, structure of arrays (lanes past kn: k = 0).
struct TileFreqs {
  double x[kTile], y[kTile], z[kTile];
};

template <typename T>
inline void tile_freqs(const T* freqs, int64_t k0, int64_t kn, TileFreqs& tf) {
  for (int64_t j = 0; j < kTile; ++j) {
    const bool in = j < kn;
    tf.x[j] = in ? kTwoPi * double(freqs[3 * (k0 + j)]) : 0.0;
    tf.y[j] = in ? kTwoPi * double(freqs[3 * (k0 + j) + 1]) : 0.0;
    tf.z[j] = in ? kTwoPi * double(freqs[3 * (k0 + j) + 2]) : 0.0;
  }
}

// (the anchor exponentials: expmi_anchor in meshft_math.h)

// Fixed-order sum of one tile of lanes: kTile / 8 terms per lane in T, then 8 in double.
template <typename T>
inline double lane_sum(const T* v) {
  static_assert(kTile % 8 == 0, "kTile must be a multiple of 8");
  T t[8];
  for (int l = 0; l < 8; ++l) t[l] = v[l];
  for (int64_t j0 = 8; j0 < kTile; j0 += 8)
    for (int l = 0; l < 8; ++l) t[l] += v[j0 + l];
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += double(t[l]);
  return s;
}

// Relative phases of one face over a tile: p = 2 pi k.(b - a), q = 2 pi k.(c - a) formed in
// double and rounded to T, whether any lane needs the recursive formulas, and the largest
// max(|p|, |q|) of the series lanes (it sets the series length).
template <typename T>
struct FaceLanes {
  T p[kTile], q[kTile];
  int any_large;
  int all_large;  // then the series is skipped
  T rmax;
  uint8_t large[kTile];  // 1 where the lane needs the recursive formulas
  // The large lanes gathered (compact_large): lane indices and double relative phases, padded
  // to a multiple of kPad with copies of the last one, so that the recursion runs over only
  // those (a mixed tile has ~13 of 64 on the large-spread workload) in full vectors.
  int n_large, n_pad;
  uint8_t idx[kTile];
  double pd[kTile], qd[kTile];
};
constexpr int kPad = 8;

// The double relative phases of lane j (one expression for the series and large-spread paths).
inline void rel_phases(const TileFreqs& tf, const FaceEdges& g, int64_t j, double& pd, double& qd) {
  pd = tf.x[j] * g.e1[0] + tf.y[j] * g.e1[1] + tf.z[j] * g.e1[2];
  qd = tf.x[j] * g.e2[0] + tf.y[j] * g.e2[1] + tf.z[j] * g.e2[2];
}

template <typename T>
inline void face_phases(const TileFreqs& tf, const FaceEdges& g, FaceLanes<T>& L) {
  // The largest r is reduced on the bit patterns: for non-negative floats the unsigned integer
  // order is the numeric order, and an integer max reduction vectorises, a floating one does
  // not (without -ffast-math the compiler must keep the NaN semantics of a ? : select).
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits kMagnitude = ~(Bits(1) << (8 * sizeof(T) - 1));
  Bits any_large = 0, all_large = ~Bits(0), rbits = 0;
  for (int64_t j = 0; j < kTile; ++j) {
    double pd, qd;
    rel_phases(tf, g, j, pd, qd);
    L.p[j] = T(pd);
    L.q[j] = T(qd);
  }
  // (a separate loop, on bit patterns: the compiler vectorises neither these reductions next
  // to the double arithmetic above nor a floating-point max reduction)
  Bits thr_bits;
  const T thr = Tuning<T>::spread();
  std::memcpy(&thr_bits, &thr, sizeof(T));
  for (int64_t j = 0; j < kTile; ++j) {
    const T p = L.p[j], q = L.q[j];
    const T ap = tabs(p), aq = tabs(q), apq = tabs(p - q);
    const T r = ap > aq ? ap : aq;
    const T s = r > apq ? r : apq;
    Bits rb, sb;
    std::memcpy(&rb, &r, sizeof(T));
    std::memcpy(&sb, &s, sizeof(T));
    rb &= kMagnitude;  // tabs(-0.0) is -0.0: clear the sign bit
    sb &= kMagnitude;
    const Bits large = sb >= thr_bits ? ~Bits(0) : Bits(0);
    L.large[j] = uint8_t(large & 1);
    any_large |= large;
    all_large &= large;
    const Bits rm = rb & ~large;  // series lanes only
    rbits = rbits > rm ? rbits : rm;
  }
  L.any_large = any_large != 0;
  L.all_large = all_large != 0;
  std::memcpy(&L.rmax, &rbits, sizeof(T));
}

// Gathers the large lanes of a face (L.any_large set): their indices and double relative
// phases. The flags are read eight at a time, most words being zero.
inline void compact_large_impl(const TileFreqs& tf, const FaceEdges& g, const uint8_t* large,
                               int& n_large, int& n_pad, uint8_t* idx, double* pd, double* qd) {
  int n = 0;
  for (int64_t j0 = 0; j0 < kTile; j0 += 8) {
    uint64_t word;
    std::memcpy(&word, large + j0, 8);
    if (word == 0) continue;
    for (int64_t j = j0; j < j0 + 8; ++j) {
      idx[n] = uint8_t(j);
      n += large[j];
    }
  }
  for (int i = 0; i < n; ++i) rel_phases(tf, g, idx[i], pd[i], qd[i]);
  const int np = (n + kPad - 1) / kPad * kPad;
  for (int i = n; i < np; ++i) {
    idx[i] = idx[n - 1];
    pd[i] = pd[n - 1];
    qd[i] = qd[n - 1];
  }
  n_large = n;
  n_pad = np;
}

template <typename T>
inline void compact_large(const TileFreqs& tf, const FaceEdges& g, FaceLanes<T>& L) {
  compact_large_impl(tf, g, L.large, L.n_large, L.n_pad, L.idx, L.pd, L.qd);
}

// Calls fn(std::integral_constant<int, N>) with the shortest series length N that is accurate
// for nodes up to r (see SeriesLength in meshft_math.h).
template <typename T, int I = 0, typename Fn>
inline void with_series_length(T r, Fn&& fn) {
  using SL = SeriesLength<T>;
  if constexpr (I + 1 < SL::kCount) {
    if (r > SL::max_r(I)) return with_series_length<T, I + 1>(r, fn);
  }
  fn(std::integral_constant<int, SL::kTerms[I]>{});
}

// Forward: adds s * f[0, p, q] (relative to the anchor) of one face to the group sums.
// The series for every lane in T, then, if some lanes' spread needs the recursion, the
// branch-free recursion in double over those lanes only, gathered (both loops vectorise).
template <typename T>
inline void face_forward(const TileFreqs& tf, const FaceEdges& g, double s, FaceLanes<T>& L,
                         double* __restrict__ gs_re, double* __restrict__ gs_im) {
  face_phases(tf, g, L);
  double ur[kTile], ui[kTile];
  if (L.all_large) {  // (the selects below read them: zero, not indeterminate)
    for (int64_t j = 0; j < kTile; ++j) ur[j] = ui[j] = 0.0;
  } else with_series_length(L.rmax, [&](auto n) {
    constexpr int N = decltype(n)::value;
    for (int64_t j = 0; j < kTile; ++j) {
      const Cplx<T> v = tri_series<T, N>(L.p[j], L.q[j]);
      ur[j] = double(v.re);
      ui[j] = double(v.im);
    }
  });
  if (L.any_large) {
    // in double (see expmi_anchor), over the gathered large lanes only
    compact_large(tf, g, L);
    const Cplx<double> one = {1.0, 0.0};
    double fr[kTile], fi[kTile];
    const int np = L.n_pad;
    for (int i = 0; i < np; ++i) {
      const double pd = L.pd[i], qd = L.qd[i];
      const Cplx<double> f =
          dd2_sorted<double, Tuning<T>::kPairTerms>(pd, qd, one, expmi_poly(pd), expmi_poly(qd));
      fr[i] = f.re;
      fi[i] = f.im;
    }
    for (int i = 0; i < L.n_large; ++i) {
      ur[L.idx[i]] = fr[i];
      ui[L.idx[i]] = fi[i];
    }
  }
  for (int64_t j = 0; j < kTile; ++j) {
    gs_re[j] += s * ur[j];
    gs_im[j] += s * ui[j];
  }
}

template <typename T>
void forward_kernel(const T* verts, const int64_t* faces, const T* weights, const T* freqs,
                    int64_t V, int64_t F, int64_t K, c10::complex<T>* out) {
  // w * 2A per face; faces that contribute nothing are dropped from the hot loop.
  std::vector<FaceGeom> geom = face_geometry(verts, faces, F);
  std::vector<double> w2a(static_cast<size_t>(F));
  for (int64_t t = 0; t < F; ++t) w2a[t] = double(weights[t]) * geom[t].two_area;
  const auto live = [&](int64_t t) { return w2a[t] != 0.0; };
  rotate_to_anchors(verts, choose_anchors(faces, F, V, live), geom);
  AnchorGroups G = group_by_anchor(verts, geom, V, live);
  for (size_t i = 0; i < G.face.size(); ++i) G.edges[i].s = w2a[G.face[i]];
  const int64_t n_groups = static_cast<int64_t>(G.start.size()) - 1;
  const int64_t n_tiles = (K + kTile - 1) / kTile;
  const int nt = std::max(1, std::min<int>(at::get_num_threads(), int(n_tiles)));

#pragma omp parallel num_threads(nt)
  {
    FaceLanes<T> L;
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int64_t k0 = tile * kTile;
      const int64_t kn = std::min(kTile, K - k0);
      TileFreqs tf;
      tile_freqs(freqs, k0, kn, tf);
      double acc_re[kTile], acc_im[kTile];
      for (int64_t j = 0; j < kTile; ++j) acc_re[j] = acc_im[j] = 0.0;
      for (int64_t gi = 0; gi < n_groups; ++gi) {
        double gs_re[kTile], gs_im[kTile];
        for (int64_t j = 0; j < kTile; ++j) gs_re[j] = gs_im[j] = 0.0;
        for (int64_t i = G.start[gi]; i < G.start[gi + 1]; ++i) {
          const FaceEdges& e = G.edges[i];
          face_forward(tf, e, e.s, L, gs_re, gs_im);
        }
        const double ax = G.anchor[3 * gi], ay = G.anchor[3 * gi + 1], az = G.anchor[3 * gi + 2];
        for (int64_t j = 0; j < kTile; ++j) {
          const Cplx<double> e = expmi_anchor<T>(tf.x[j] * ax + tf.y[j] * ay + tf.z[j] * az);
          acc_re[j] += e.re * gs_re[j] - e.im * gs_im[j];
          acc_im[j] += e.re * gs_im[j] + e.im * gs_re[j];
        }
      }
      for (int64_t j = 0; j < kn; ++j) out[k0 + j] = c10::complex<T>(T(acc_re[j]), T(acc_im[j]));
    }
  }
}

// Backward, one lane: g0 = Re(H F0) and g_corner = Re(H F_corner) k (corner_terms in
// meshft_math.h) added to acc[0..9][j].
template <typename T>
inline void accumulate_lane(T hr, T hi, Cplx<T> f0, Cplx<T> fa, Cplx<T> fb, T kx, T ky, T kz,
                            T (*__restrict__ acc)[kTile], int64_t j) {
  T g0, gA, gB, gC;
  corner_terms(Cplx<T>{hr, hi}, f0, fa, fb, g0, gA, gB, gC);
  acc[0][j] += g0;
  acc[1][j] += gA * kx;
  acc[2][j] += gA * ky;
  acc[3][j] += gA * kz;
  acc[4][j] += gB * kx;
  acc[5][j] += gB * ky;
  acc[6][j] += gB * kz;
  acc[7][j] += gC * kx;
  acc[8][j] += gC * ky;
  acc[9][j] += gC * kz;
}

// Backward: one face over one tile. H = conj(G) exp(-i pa) per lane (computed once per anchor
// group); F0 = f[0,p,q], Fa = f[0,0,p,q], Fb = f[p,p,0,q] relative to exp(-i pa), the third
// corner's value being -i F0 - Fa - Fb. Adds, per lane, Re(H F0) to acc[0] and
// Re(H F_corner) k to acc[1..9].
template <typename T>
inline void face_backward(const TileFreqs& tf, const FaceEdges& g, const T* __restrict__ hr,
                          const T* __restrict__ hi, const T* __restrict__ KX,
                          const T* __restrict__ KY, const T* __restrict__ KZ, FaceLanes<T>& L,
                          T (*__restrict__ acc)[kTile]) {
  face_phases(tf, g, L);
  T f0r[kTile], f0i[kTile], far_[kTile], fai[kTile], fbr[kTile], fbi[kTile];
  if (L.all_large) {  // (the selects below read them: zero, not indeterminate)
    for (int64_t j = 0; j < kTile; ++j) f0r[j] = f0i[j] = far_[j] = fai[j] = fbr[j] = fbi[j] = T(0);
  } else with_series_length(L.rmax, [&](auto n) {
    constexpr int N = decltype(n)::value;
    for (int64_t j = 0; j < kTile; ++j) {
      Cplx<T> s0, sa, sb;
      tri_series_grad_ab<T, N>(L.p[j], L.q[j], s0, sa, sb);
      f0r[j] = s0.re;
      f0i[j] = s0.im;
      far_[j] = sa.re;
      fai[j] = sa.im;
      fbr[j] = sb.re;
      fbi[j] = sb.im;
    }
  });
  if (L.any_large) {
    // in T, like the series (the gradient contract is 1e-4 relative), over the gathered large
    // lanes only
    compact_large(tf, g, L);
    T c[6][kTile];
    const int np = L.n_pad;
    for (int i = 0; i < np; ++i) {
      const double pd = L.pd[i], qd = L.qd[i];
      Cplx<T> f0, fa, fb;
      tri_grad_large<T>(T(pd), T(qd), expmi_grad<T>(pd), expmi_grad<T>(qd), f0, fa, fb);
      c[0][i] = f0.re;
      c[1][i] = f0.im;
      c[2][i] = fa.re;
      c[3][i] = fa.im;
      c[4][i] = fb.re;
      c[5][i] = fb.im;
    }
    for (int i = 0; i < L.n_large; ++i) {
      const int j = L.idx[i];
      f0r[j] = c[0][i];
      f0i[j] = c[1][i];
      far_[j] = c[2][i];
      fai[j] = c[3][i];
      fbr[j] = c[4][i];
      fbi[j] = c[5][i];
    }
  }
  for (int64_t j = 0; j < kTile; ++j) {
    accumulate_lane(hr[j], hi[j], Cplx<T>{f0r[j], f0i[j]}, Cplx<T>{far_[j], fai[j]},
                    Cplx<T>{fbr[j], fbi[j]}, KX[j], KY[j], KZ[j], acc, j);
  }
}

// Per-face frequency sums of the backward pass.
struct FaceAcc {
  double r;        // sum_k Re(conj(G) f[pa, pb, pc])
  double v[3][3];  // v[0]: sum_k Re(conj(G) f[pa, pa, pb, pc]) k; v[1], v[2]: corners b, c
};

template <typename T>
void backward_kernel(const T* verts, const int64_t* faces, const T* weights, const T* freqs,
                     const c10::complex<T>* grad_out, int64_t V, int64_t F, int64_t K,
                     T* grad_verts, T* grad_weights) {
  std::vector<FaceGeom> geom = face_geometry(verts, faces, F);
  // non-degenerate faces; the others have exactly zero gradient
  const auto live = [&](int64_t t) { return geom[t].two_area > 0.0; };
  rotate_to_anchors(verts, choose_anchors(faces, F, V, live), geom);
  const AnchorGroups G = group_by_anchor(verts, geom, V, live);
  const int64_t n_groups = static_cast<int64_t>(G.start.size()) - 1;
  const int64_t n_live = static_cast<int64_t>(G.face.size());
  std::vector<FaceAcc> acc(static_cast<size_t>(n_live), FaceAcc{0.0, {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}}});
  // Threads take chunks of consecutive anchor groups (about equal numbers of faces, 8 per
  // thread, handed out dynamically: a thread that the machine's other jobs slow down takes
  // fewer) and walk the frequencies in blocks of kBlock tiles, preparing each block privately:
  // threads never wait for each other (barriers are costly on a busy machine), and every
  // face's sums are formed in the same order whatever the number of threads. Per face and
  // block, the lanes accumulate in T over at most kBlock terms, then go to double.
  constexpr int64_t kBlock = 16;
  const int64_t n_tiles = (K + kTile - 1) / kTile;
  const int64_t n_blocks = (n_tiles + kBlock - 1) / kBlock;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_live / 64 + 1)));
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(n_groups, 8 * int64_t(nt)));
  const auto first_at_or_after = [&](int64_t f) {
    return int64_t(std::lower_bound(G.start.begin(), G.start.end() - 1, f) - G.start.begin());
  };

#pragma omp parallel num_threads(nt)
  {
    FaceLanes<T> L;
    std::vector<TileFreqs> tf(static_cast<size_t>(kBlock));
    std::vector<T> kx(kBlock * kTile), ky(kBlock * kTile), kz(kBlock * kTile);
    std::vector<double> gr(kBlock * kTile), gi(kBlock * kTile);
    std::vector<T> hr(kBlock * kTile), hi(kBlock * kTile);
    alignas(64) T lanes[10][kTile];
#pragma omp for schedule(dynamic, 1)
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      // groups [g_begin, g_end): those whose first face falls in this chunk's share of faces
      const int64_t g_begin = first_at_or_after(n_live * chunk / n_chunks);
      const int64_t g_end = first_at_or_after(n_live * (chunk + 1) / n_chunks);
      for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const int64_t t0 = blk * kBlock;
        const int64_t nsub = std::min(kBlock, n_tiles - t0);
        for (int64_t sub = 0; sub < nsub; ++sub) {
          const int64_t k0 = (t0 + sub) * kTile;
          tile_freqs(freqs, k0, std::min(kTile, K - k0), tf[sub]);
        }
        for (int64_t j = 0; j < nsub * kTile; ++j) {
          const int64_t k = t0 * kTile + j;
          const bool in = k < K;  // padding lanes get G = 0: they add nothing
          kx[j] = in ? freqs[3 * k] : T(0);
          ky[j] = in ? freqs[3 * k + 1] : T(0);
          kz[j] = in ? freqs[3 * k + 2] : T(0);
          gr[j] = in ? double(grad_out[k].real()) : 0.0;
          gi[j] = in ? double(grad_out[k].imag()) : 0.0;
        }
        for (int64_t gidx = g_begin; gidx < g_end; ++gidx) {
          const double ax = G.anchor[3 * gidx], ay = G.anchor[3 * gidx + 1], az = G.anchor[3 * gidx + 2];
          for (int64_t sub = 0; sub < nsub; ++sub) {
            const TileFreqs& f = tf[sub];
            T* HR = hr.data() + sub * kTile;
            T* HI = hi.data() + sub * kTile;
            const double* GR = gr.data() + sub * kTile;
            const double* GI = gi.data() + sub * kTile;
            for (int64_t j = 0; j < kTile; ++j) {
              // H = conj(G) exp(-i pa): Re(conj(G) exp(-i pa) F) = Re(H F)
              const Cplx<double> e = expmi_anchor<T>(f.x[j] * ax + f.y[j] * ay + f.z[j] * az);
              HR[j] = T(GR[j] * e.re + GI[j] * e.im);
              HI[j] = T(GR[j] * e.im - GI[j] * e.re);
            }
          }
          for (int64_t i = G.start[gidx]; i < G.start[gidx + 1]; ++i) {
            const FaceEdges& g = G.edges[i];
            for (int n = 0; n < 10; ++n)
              for (int64_t j = 0; j < kTile; ++j) lanes[n][j] = T(0);
            for (int64_t sub = 0; sub < nsub; ++sub) {
              const int64_t o = sub * kTile;
              face_backward(tf[sub], g, hr.data() + o, hi.data() + o, kx.data() + o, ky.data() + o,
                            kz.data() + o, L, lanes);
            }
            FaceAcc& A = acc[i];
            A.r += lane_sum(lanes[0]);
            for (int c = 0; c < 3; ++c)
              for (int e = 0; e < 3; ++e) A.v[c][e] += lane_sum(lanes[1 + 3 * c + e]);
          }
        }
      }
    }
  }

  // corner gradients (face_grads in meshft_math.h), gathered serially: deterministic
  std::vector<double> gv(static_cast<size_t>(3 * V), 0.0);
  for (int64_t t = 0; t < F; ++t) grad_weights[t] = T(0);
  for (int64_t i = 0; i < n_live; ++i) {
    const int64_t t = G.face[i];
    const FaceGeom& g = geom[t];
    const FaceAcc& A = acc[i];
    double out[9];
    grad_weights[t] = T(face_grads(double(weights[t]), g.two_area, A.r, &g.garea[0][0], &A.v[0][0], out));
    const int64_t corner[3] = {g.a, g.b, g.c};
    for (int c = 0; c < 3; ++c)
      for (int d = 0; d < 3; ++d) gv[3 * corner[c] + d] += out[3 * c + d];
  }
  for (int64_t i = 0; i < 3 * V; ++i) grad_verts[i] = T(gv[i]);
}
