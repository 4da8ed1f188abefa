// Causal attention for training, forward and backward, on bf16 q, k, v with AVX512-BF16's
// `vdpbf16ps` (two bf16 products summed into each float32 lane per instruction).
//
// Shapes as genforge's packed rows hold them (genforge/model/attention.py): q (S, W, H, D), k and v
// (S, W, Hkv, D), each of the S rows one sequence attended causally, H a multiple of Hkv (grouped
// queries). One unit of work is a row and a kv head: its keys and values are rearranged once into
// the layouts the instruction wants (below), small enough to stay in the core's caches (W * D * 2
// bytes each, 32 KB at W = 256, D = 64), and then serve the unit's H / Hkv query heads. Units are
// split over PyTorch's threads.
//
// Every product is a small matrix product written as one of two register tiles:
// - `scores_tile`: 4 queries x 16-key blocks, summing over d in pairs: keys in the lanes, each
//   lane's pair (k[j][2p], k[j][2p+1]) times the query's pair broadcast (layout `pack_lanes`).
//   Q K^T, and in backward dO V^T.
// - `pairs_tile`: 4 rows x 16-wide chunks of d, summing over another index t in pairs: d in the
//   lanes, each lane's pair (x[2t][d], x[2t+1][d]) times the row's pair (a[2t], a[2t+1]) broadcast
//   (layout `pack_pairs`). P V and dS K (rows are queries), P^T dO and dS^T Q (rows are keys).
// The forward takes each query's scores over its keys whole (4 queries at a time, a few KB), so its
// softmax is exact, not online; the backward goes in blocks of 32 queries (FlashAttention-2's
// order: P from the saved log-sum-exp, dS = P (dP - rowsum(dO O)), dQ per block, dK and dV summed
// over the blocks and the unit's query heads in float32). P and dS are rounded to bf16 for their
// products, as PyTorch's and FlashAttention's bf16 kernels do; every sum is float32.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace genforge_attention {

constexpr int64_t R = 4;    // queries (or keys) per register tile
constexpr int64_t L = 16;   // float32 lanes
constexpr int64_t BQ = 32;  // backward's block of queries

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

inline uint32_t pair_at(const uint16_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// kp[((jb * D/2 + p) * 16 + lane) * 2 + e] = x[jb * 16 + lane][2p + e]; rows n.. (up to `rows`) 0.
void pack_lanes(const uint16_t* x, int64_t stride, int64_t n, int64_t rows, int64_t D,
                uint16_t* kp) {
  const int64_t P = D / 2;
  uint32_t* out = reinterpret_cast<uint32_t*>(kp);
  for (int64_t j = 0; j < rows; ++j) {
    uint32_t* dst = out + (j / L) * P * L + j % L;
    if (j < n) {
      const uint16_t* row = x + j * stride;
      for (int64_t p = 0; p < P; ++p) dst[p * L] = pair_at(row + 2 * p);
    } else {
      for (int64_t p = 0; p < P; ++p) dst[p * L] = 0;
    }
  }
}

// xp[((t * D) + d) * 2 + e] = x[2t + e][d]; rows n.. (up to `rows`, even) 0.
void pack_pairs(const uint16_t* x, int64_t stride, int64_t n, int64_t rows, int64_t D,
                uint16_t* xp) {
  for (int64_t j = 0; j < rows; ++j) {
    uint16_t* dst = xp + (j / 2) * D * 2 + j % 2;
    if (j < n) {
      const uint16_t* row = x + j * stride;
      for (int64_t d = 0; d < D; ++d) dst[2 * d] = row[d];
    } else {
      for (int64_t d = 0; d < D; ++d) dst[2 * d] = 0;
    }
  }
}

// s[r][jb * 16 + lane] (r < 4, blocks jb0 .. jb0 + NB) = sum over d of q[r][d] * x[j][d].
template <int NB>
BF16_INLINE void scores_tile(const uint16_t* q, int64_t ldq, const uint16_t* kp, int64_t P,
                             int64_t jb0, float* s, int64_t lds) {
  __m512 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    __m512i kv[NB];
    for (int b = 0; b < NB; ++b)
      kv[b] = _mm512_loadu_si512(kp + ((jb0 + b) * P + p) * 2 * L);
    for (int r = 0; r < R; ++r) {
      const __m512i qb = _mm512_set1_epi32(static_cast<int>(pair_at(q + r * ldq + 2 * p)));
      for (int b = 0; b < NB; ++b)
        acc[r][b] = _mm512_dpbf16_ps(acc[r][b], (__m512bh)kv[b], (__m512bh)qb);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(s + r * lds + (jb0 + b) * L, acc[r][b]);
}

// 4 query rows' scores over key blocks 0 .. nb.
BF16 void scores(const uint16_t* q, int64_t ldq, const uint16_t* kp, int64_t P, int64_t nb,
                 float* s, int64_t lds) {
  int64_t jb = 0;
  for (; jb + 4 <= nb; jb += 4) scores_tile<4>(q, ldq, kp, P, jb, s, lds);
  for (; jb < nb; ++jb) scores_tile<1>(q, ldq, kp, P, jb, s, lds);
}

// out[r][d0 + c * 16 + lane] (r < 4, c < C) (+)= sum over t < n of a[r][t] * x[t][d], a in pairs
// (row r at a + r * lda), x as `pack_pairs` made it.
template <int C>
BF16_INLINE void pairs_tile(const uint16_t* a, int64_t lda, const uint16_t* xp, int64_t D,
                            int64_t n, int64_t d0, float* out, int64_t ldo, bool accumulate) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      acc[r][c] = accumulate ? _mm512_loadu_ps(out + r * ldo + d0 + c * L) : _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    __m512i xv[C];
    for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_si512(xp + (t * D + d0 + c * L) * 2);
    for (int r = 0; r < R; ++r) {
      const __m512i ab = _mm512_set1_epi32(static_cast<int>(pair_at(a + r * lda + 2 * t)));
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv[c], (__m512bh)ab);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + r * ldo + d0 + c * L, acc[r][c]);
}

BF16 void pairs(const uint16_t* a, int64_t lda, const uint16_t* xp, int64_t D, int64_t n,
                float* out, int64_t ldo, bool accumulate) {
  int64_t d = 0;
  for (; d + 4 * L <= D; d += 4 * L) pairs_tile<4>(a, lda, xp, D, n, d, out, ldo, accumulate);
  switch ((D - d) / L) {
    case 3: pairs_tile<3>(a, lda, xp, D, n, d, out, ldo, accumulate); break;
    case 2: pairs_tile<2>(a, lda, xp, D, n, d, out, ldo, accumulate); break;
    case 1: pairs_tile<1>(a, lda, xp, D, n, d, out, ldo, accumulate); break;
    default: break;
  }
}

BF16 void store_bf16(const float* x, int64_t n, uint16_t* y) {
  int64_t i = 0;
  for (; i + L <= n; i += L)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), to_bf16(_mm512_loadu_ps(x + i)));
  for (; i < n; ++i) y[i] = c10::BFloat16(x[i]).x;
}

// Copies rows i0 .. i0 + n of x (row stride `stride`) into `rows` x D, zeros past n.
void copy_rows(const uint16_t* x, int64_t stride, int64_t n, int64_t rows, int64_t D,
               uint16_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    if (r < n)
      std::memcpy(out + r * D, x + r * stride, D * 2);
    else
      std::memset(out + r * D, 0, D * 2);
  }
}

struct Dims {
  int64_t S, W, H, Hkv, D, G, Wp;
};

Dims dims_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v: (S, W, heads, D)");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16,
              "q, k, v: bfloat16");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v: contiguous");
  Dims d{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 0, 0};
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == d.S && k.size(1) == d.W && k.size(3) == d.D,
              "k, v: (S, W, Hkv, D) as q");
  TORCH_CHECK(d.Hkv > 0 && d.H % d.Hkv == 0, "q's heads: a multiple of k's");
  TORCH_CHECK(d.D % L == 0 && d.D <= 512, "head size: a multiple of 16, at most 512");
  d.G = d.H / d.Hkv;
  d.Wp = round_up(std::max<int64_t>(d.W, 1), 32);
  return d;
}

const uint16_t* bits(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}

uint16_t* bits_out(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// The lanes of keys j .. j + 15 that a query at position `last` sees (keys up to it).
BF16_INLINE __mmask16 seen(int64_t j, int64_t last) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return _mm512_cmple_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(j))),
                                 _mm512_set1_epi32(static_cast<int>(last)));
}

// Softmax of one query's scores s[0 .. nk) (keys past `last` masked): p as bf16, its lse.
BF16 double softmax_row(float* s, int64_t nk, int64_t last, float scale, uint16_t* p) {
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < nk; j += L) {
    const __mmask16 ok = seen(j, last);
    const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + j), vscale);
    _mm512_storeu_ps(s + j, x);
    mx = _mm512_mask_max_ps(mx, ok, mx, x);
  }
  const float m = _mm512_reduce_max_ps(mx);
  const __m512 vm = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < nk; j += L) {
    const __mmask16 ok = seen(j, last);
    const __m512 e = _mm512_maskz_mov_ps(ok, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm)));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  const float total = _mm512_reduce_add_ps(sum);
  const __m512 inv = _mm512_set1_ps(1.f / total);
  for (int64_t j = 0; j < nk; j += L)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j),
                        to_bf16(_mm512_mul_ps(_mm512_loadu_ps(s + j), inv)));
  return static_cast<double>(m) + std::log(static_cast<double>(total));
}

// A thread's working memory for forward units (one row's keys and values rearranged, 4 queries'
// scores, probabilities, padded queries and outputs).
struct ForwardScratch {
  std::vector<uint16_t> kp, vp, pb, qt;
  std::vector<float> sc, ot;
  explicit ForwardScratch(const Dims& d)
      : kp(d.Wp * d.D), vp(d.Wp * d.D), pb(R * d.Wp), qt(R * d.D), sc(R * d.Wp), ot(R * d.D) {}
};

BF16 void forward_unit(const Dims& d, int64_t s, int64_t g, const uint16_t* q, const uint16_t* k,
                       const uint16_t* v, float scale, uint16_t* out, double* lse,
                       ForwardScratch& x) {
  const int64_t W = d.W, D = d.D, Wp = d.Wp, qstride = d.H * D, kstride = d.Hkv * D;
  pack_lanes(k + (s * W * d.Hkv + g) * D, kstride, W, Wp, D, x.kp.data());
  pack_pairs(v + (s * W * d.Hkv + g) * D, kstride, W, Wp, D, x.vp.data());
  for (int64_t h = g * d.G; h < (g + 1) * d.G; ++h) {
    const uint16_t* qh = q + (s * W * d.H + h) * D;
    for (int64_t i0 = 0; i0 < W; i0 += R) {
      const int64_t n = std::min(R, W - i0), nk = round_up(i0 + R, L);
      const uint16_t* qr = qh + i0 * qstride;
      int64_t ldq = qstride;
      if (n < R) {
        copy_rows(qr, qstride, n, R, D, x.qt.data());
        qr = x.qt.data(), ldq = D;
      }
      scores(qr, ldq, x.kp.data(), D / 2, nk / L, x.sc.data(), Wp);
      for (int64_t r = 0; r < R; ++r) {
        const double l = softmax_row(x.sc.data() + r * Wp, nk, i0 + r, scale, x.pb.data() + r * Wp);
        if (r < n) lse[(s * d.H + h) * W + i0 + r] = l;
      }
      pairs(x.pb.data(), Wp, x.vp.data(), D, nk / 2, x.ot.data(), D, false);
      for (int64_t r = 0; r < n; ++r)
        store_bf16(x.ot.data() + r * D, D, out + ((s * W + i0 + r) * d.H + h) * D);
    }
  }
}

std::vector<torch::Tensor> flash_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                         double scale) {
  const Dims d = dims_of(q, k, v);
  auto out = torch::empty_like(q);
  auto lse = torch::empty({d.S, d.H, d.W}, q.options().dtype(at::kDouble));
  const uint16_t *qb = bits(q), *kb = bits(k), *vb = bits(v);
  uint16_t* ob = bits_out(out);
  double* lb = lse.data_ptr<double>();
  at::parallel_for(0, d.S * d.Hkv, 1, [&](int64_t u0, int64_t u1) {
    ForwardScratch x(d);
    for (int64_t u = u0; u < u1; ++u)
      forward_unit(d, u / d.Hkv, u % d.Hkv, qb, kb, vb, static_cast<float>(scale), ob, lb, x);
  });
  return {out, lse};
}

// The same for backward units.
struct Scratch {
  std::vector<uint16_t> kp, vp, kj, qb, dob, qpair, dopair, dsb, pt, dst;
  std::vector<float> sc, dp, dk, dv, dqt;
  explicit Scratch(const Dims& d)
      : kp(d.Wp * d.D), vp(d.Wp * d.D), kj(d.Wp * d.D), qb(BQ * d.D), dob(BQ * d.D),
        qpair(BQ * d.D), dopair(BQ * d.D), dsb(R * d.Wp), pt(d.Wp * BQ), dst(d.Wp * BQ),
        sc(R * d.Wp), dp(R * d.Wp), dk(d.Wp * d.D), dv(d.Wp * d.D), dqt(R * d.D) {}
};

// 4 rows of 16 bf16 values (one per key) into out[key * ld + row]: each key's 4 values as one
// 64-bit store (AVX2's unpacks work within 128-bit halves: keys 0-3 and 8-11 in the low ones).
BF16_INLINE void store_transposed(const __m256i rows[R], uint16_t* out, int64_t ld) {
  const __m256i lo01 = _mm256_unpacklo_epi16(rows[0], rows[1]);  // keys 0-3, 8-11
  const __m256i hi01 = _mm256_unpackhi_epi16(rows[0], rows[1]);  // keys 4-7, 12-15
  const __m256i lo23 = _mm256_unpacklo_epi16(rows[2], rows[3]);
  const __m256i hi23 = _mm256_unpackhi_epi16(rows[2], rows[3]);
  const __m256i q[4] = {_mm256_unpacklo_epi32(lo01, lo23), _mm256_unpackhi_epi32(lo01, lo23),
                        _mm256_unpacklo_epi32(hi01, hi23), _mm256_unpackhi_epi32(hi01, hi23)};
  // q[0]: keys 0, 1, 8, 9; q[1]: 2, 3, 10, 11; q[2]: 4, 5, 12, 13; q[3]: 6, 7, 14, 15
  for (int k = 0; k < 4; ++k) {
    const int64_t key = 2 * k;
    const uint64_t v0 = _mm256_extract_epi64(q[k], 0), v1 = _mm256_extract_epi64(q[k], 1);
    const uint64_t v2 = _mm256_extract_epi64(q[k], 2), v3 = _mm256_extract_epi64(q[k], 3);
    std::memcpy(out + key * ld, &v0, 8);
    std::memcpy(out + (key + 1) * ld, &v1, 8);
    std::memcpy(out + (key + 8) * ld, &v2, 8);
    std::memcpy(out + (key + 9) * ld, &v3, 8);
  }
}

BF16 void backward_unit(const Dims& d, int64_t s, int64_t g, const uint16_t* dO, const uint16_t* q,
                        const uint16_t* k, const uint16_t* v, const uint16_t* o,
                        const double* lse, float scale, uint16_t* dq, uint16_t* dk,
                        uint16_t* dv, Scratch& x) {
  const int64_t W = d.W, D = d.D, Wp = d.Wp, P = D / 2, qstride = d.H * D,
                kstride = d.Hkv * D;
  const uint16_t* kg = k + (s * W * d.Hkv + g) * D;
  const uint16_t* vg = v + (s * W * d.Hkv + g) * D;
  pack_lanes(kg, kstride, W, Wp, D, x.kp.data());
  pack_lanes(vg, kstride, W, Wp, D, x.vp.data());
  pack_pairs(kg, kstride, W, Wp, D, x.kj.data());
  std::fill(x.dk.begin(), x.dk.end(), 0.f);
  std::fill(x.dv.begin(), x.dv.end(), 0.f);
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t h = g * d.G; h < (g + 1) * d.G; ++h) {
    const int64_t head = (s * W * d.H + h) * D;
    for (int64_t i0 = 0; i0 < W; i0 += BQ) {
      const int64_t n = std::min(BQ, W - i0), nkb = round_up(i0 + BQ, L);
      copy_rows(q + head + i0 * qstride, qstride, n, BQ, D, x.qb.data());
      copy_rows(dO + head + i0 * qstride, qstride, n, BQ, D, x.dob.data());
      pack_pairs(x.qb.data(), D, BQ, BQ, D, x.qpair.data());
      pack_pairs(x.dob.data(), D, BQ, BQ, D, x.dopair.data());
      for (int64_t t0 = 0; t0 < BQ; t0 += R) {
        const int64_t nk = round_up(i0 + t0 + R, L);
        scores(x.qb.data() + t0 * D, D, x.kp.data(), P, nk / L, x.sc.data(), Wp);
        scores(x.dob.data() + t0 * D, D, x.vp.data(), P, nk / L, x.dp.data(), Wp);
        // P = exp(scale * S - lse) and dS = scale * P (dP - rowsum(dO O)) (0 past the causal edge
        // and for padding rows), row-major for dQ and transposed (keys' rows) for dK and dV
        float rowsum[R], rowlse[R];
        int64_t last[R];
        for (int64_t r = 0; r < R; ++r) {
          const int64_t i = i0 + t0 + r;
          rowsum[r] = 0.f, rowlse[r] = 0.f, last[r] = i < W ? i : -1;  // padding: no key
          if (i >= W) continue;
          const uint16_t* orow = o + head + i * qstride;
          const uint16_t* dorow = x.dob.data() + (t0 + r) * D;
          for (int64_t c = 0; c < D; ++c) rowsum[r] += bf16_bits_to_float(orow[c]) * bf16_bits_to_float(dorow[c]);
          rowlse[r] = static_cast<float>(lse[(s * d.H + h) * W + i]);
        }
        for (int64_t j = 0; j < nk; j += L) {
          __m256i pr[R], dsr[R];
          for (int64_t r = 0; r < R; ++r) {
            const __mmask16 ok = seen(j, last[r]);
            const __m512 p = _mm512_maskz_mov_ps(
                ok, exp512(_mm512_fmsub_ps(_mm512_loadu_ps(x.sc.data() + r * Wp + j), vscale,
                                           _mm512_set1_ps(rowlse[r]))));
            const __m512 dp = _mm512_sub_ps(_mm512_loadu_ps(x.dp.data() + r * Wp + j),
                                            _mm512_set1_ps(rowsum[r]));
            pr[r] = to_bf16(p);
            dsr[r] = to_bf16(_mm512_mul_ps(_mm512_mul_ps(p, dp), vscale));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(x.dsb.data() + r * Wp + j), dsr[r]);
          }
          store_transposed(pr, x.pt.data() + j * BQ + t0, BQ);
          store_transposed(dsr, x.dst.data() + j * BQ + t0, BQ);
        }
        for (int64_t j = nk; j < nkb; ++j) {
          std::memset(x.pt.data() + j * BQ + t0, 0, R * 2);
          std::memset(x.dst.data() + j * BQ + t0, 0, R * 2);
        }
        // dQ = dS K (dS already times the scale) for these 4 queries
        pairs(x.dsb.data(), Wp, x.kj.data(), D, nk / 2, x.dqt.data(), D, false);
        for (int64_t r = 0; r < R && i0 + t0 + r < W; ++r)
          store_bf16(x.dqt.data() + r * D, D, dq + head + (i0 + t0 + r) * qstride);
      }
      // dV += P^T dO, dK += dS^T Q over this block's queries, 4 keys at a time
      for (int64_t j = 0; j < nkb; j += R) {
        pairs(x.pt.data() + j * BQ, BQ, x.dopair.data(), D, BQ / 2, x.dv.data() + j * D, D, true);
        pairs(x.dst.data() + j * BQ, BQ, x.qpair.data(), D, BQ / 2, x.dk.data() + j * D, D, true);
      }
    }
  }
  for (int64_t j = 0; j < W; ++j) {
    store_bf16(x.dk.data() + j * D, D, dk + (s * W * d.Hkv + g) * D + j * kstride);
    store_bf16(x.dv.data() + j * D, D, dv + (s * W * d.Hkv + g) * D + j * kstride);
  }
}

std::vector<torch::Tensor> flash_backward(torch::Tensor grad, torch::Tensor q, torch::Tensor k,
                                          torch::Tensor v, torch::Tensor out, torch::Tensor lse,
                                          double scale) {
  const Dims d = dims_of(q, k, v);
  TORCH_CHECK(grad.sizes() == q.sizes() && out.sizes() == q.sizes() &&
                  grad.scalar_type() == at::kBFloat16 && out.scalar_type() == at::kBFloat16,
              "grad, out: bfloat16, shaped as q");
  grad = grad.contiguous(), out = out.contiguous();
  TORCH_CHECK(lse.scalar_type() == at::kDouble && lse.is_contiguous() &&
                  lse.sizes() == at::IntArrayRef({d.S, d.H, d.W}),
              "lse: float64 (S, H, W)");
  auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
  const uint16_t *gb = bits(grad), *qb = bits(q), *kb = bits(k), *vb = bits(v), *ob = bits(out);
  uint16_t *dqb = bits_out(dq), *dkb = bits_out(dk), *dvb = bits_out(dv);
  const double* lb = lse.data_ptr<double>();
  at::parallel_for(0, d.S * d.Hkv, 1, [&](int64_t u0, int64_t u1) {
    Scratch x(d);
    for (int64_t u = u0; u < u1; ++u)
      backward_unit(d, u / d.Hkv, u % d.Hkv, gb, qb, kb, vb, ob, lb, static_cast<float>(scale),
                    dqb, dkb, dvb, x);
  });
  return {dq, dk, dv};
}

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16");
}

}  // namespace genforge_attention
