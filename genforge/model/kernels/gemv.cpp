// Weight-only quantized matmuls for the CPU: y (M, N) = x (M, K) @ W^T, W in blocks of 32 inputs.
//
//   q4: w = scale * q + min, q in 0..15 (GGUF Q4_1's own blocks); per row K/2 bytes, two blocks of
//       32 interleaved per 32 bytes (K a multiple of 64) (byte j: block 2i's q[j] low nibble, block 2i+1's q[j] high),
//       so one 32-byte load unpacks into two whole blocks; scales and mins fp16, (N, K/32) each.
//   q8: w = scale * q, q in -127..127 (GGUF Q8_0's blocks); (N, K) int8, scales fp16 (N, K/32).
//       Or uint8 u = q + 16, u in 0..31 (GGUF Q5_0's own 5-bit values): w = scale * (u - 16). u
//       goes into the unsigned side of the integer dot product as it is, and the -16 into a term
//       on x's block sums (as q4's mins), so no sign trick is needed per dot product.
//   q5: GGUF Q5_0's blocks packed as the file keeps them, 5.5 bits a weight: u's low four bits as q4
//       keeps its q (K/2 bytes a row, K a multiple of 64), its fifth bits as one 32-bit word per
//       block (bit j: u[j]'s; (N, K/32) int32, the file's own qh), scales fp16 (N, K/32). A block
//       is unpacked to q8's uint8 u in registers (the nibbles, and 16 where the word's bit is set)
//       and goes on as those do: a third fewer bytes read per token than the uint8 u.
//
// x is quantized once per call to int8 in blocks of 32 (scale = amax / 127), as llama.cpp does, so
// each block's dot product is an integer one (AVX512-VNNI `vpdpbusd`, or AVX2 `vpmaddubsw`), scaled
// once per block. The code for each instruction set is compiled with a target attribute and chosen
// at run time from the CPU's flags; a portable loop serves any other CPU. Output rows are split over
// PyTorch's own threads (at::parallel_for), and each weight row is read once for up to 8 rows of x
// (4 with AVX2, whose q5 and uint8 q8, and q4 in long chunks, go 8 weight rows at a time, one per
// lane: see `by_lanes`).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace {

constexpr int64_t QK = 32;     // inputs per block
constexpr int64_t MBLOCK = 4;  // rows of x per pass over a weight row (AVX2: 16 registers)
constexpr int64_t MBLOCK512 = 8;  // the same with AVX-512's 32 registers
constexpr int kQ8 = 0, kQ4 = 1, kQ5 = 2, kQ5P = 3;  // q8 int8, q4, q8 uint8 (Q5_0's u), q5
constexpr int Q5_OFFSET = 16;  // Q5_0's u = q + 16

struct Activations {  // x quantized: per row K int8, and per block its scale, sum(q) and d * sum(q)
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<int32_t> sum;
  int64_t M, K, G;
};

// A block's int8 scale from its largest magnitude, and its inverse (0 for a block of zeros): one
// rule for `quantize` and `fake_quantize`, so the two put x on the same grid bit for bit.
inline void scale_of(float amax, float& d, float& inv) {
  d = amax / 127.f;
  inv = d ? 1.f / d : 0.f;
}

inline void block_scale(const float* xs, float& d, float& inv) {  // the block of 32 at xs
  float amax = 0.f;
  for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(xs[j]));
  scale_of(amax, d, inv);
}

Activations quantize(const float* x, int64_t M, int64_t K) {
  Activations a{std::vector<int8_t>(M * K), std::vector<float>(M * (K / QK)),
                std::vector<float>(M * (K / QK)), std::vector<int32_t>(M * (K / QK)), M, K, K / QK};
  at::parallel_for(0, M * a.G, 256, [&](int64_t b0, int64_t b1) {  // blocks of 32, row by row
    for (int64_t b = b0; b < b1; ++b) {
      const float* xs = x + b * QK;
      float d, inv;
      block_scale(xs, d, inv);
      int sum = 0;
      int8_t* qs = a.q.data() + b * QK;
      for (int j = 0; j < QK; ++j) {
        qs[j] = static_cast<int8_t>(std::nearbyint(xs[j] * inv));
        sum += qs[j];
      }
      a.d[b] = d;
      a.s[b] = d * sum;
      a.sum[b] = sum;
    }
  });
  return a;
}

inline float half(const at::Half* p, int64_t i) { return static_cast<float>(p[i]); }

// -- portable ------------------------------------------------------------------------------------

// Value j of weight row n's block g as stored: q4's q (0..15), q5's and uint8 q8's u (0..31), q8's q.
template <int FMT>
inline int value_of(const void* w, const uint32_t* qh, int64_t n, int64_t K, int64_t g, int j) {
  if (FMT == kQ4 || FMT == kQ5P) {
    const uint8_t* bytes = static_cast<const uint8_t*>(w) + n * K / 2 + (g / 2) * QK;
    const int q = (bytes[j] >> ((g % 2) * 4)) & 15;
    return FMT == kQ4 ? q : q | (((qh[n * (K / QK) + g] >> j) & 1) << 4);
  }
  if (FMT == kQ5) return static_cast<const uint8_t*>(w)[n * K + g * QK + j];
  return static_cast<const int8_t*>(w)[n * K + g * QK + j];
}

template <int FMT>
void rows_ref(const Activations& a, const void* w, const at::Half* sc, const at::Half* mn,
              const uint32_t* qh, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t K = a.K, G = a.G;
  const int offset = FMT == kQ5 || FMT == kQ5P ? Q5_OFFSET : 0;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < a.M; ++m) {
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const int8_t* xs = a.q.data() + m * K + g * QK;
        int dot = 0;
        for (int j = 0; j < QK; ++j) dot += (value_of<FMT>(w, qh, n, K, g, j) - offset) * xs[j];
        acc += half(sc, n * G + g) * a.d[m * G + g] * dot;
        if (FMT == kQ4) acc += half(mn, n * G + g) * a.s[m * G + g];
      }
      y[m * N + n] = acc;
    }
  }
}

// -- AVX2 (+ FMA, F16C) --------------------------------------------------------------------------


AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2 inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

AVX2_INLINE __m256 dot_u8s8_avx2(__m256i u, __m256i s) {  // 8 int32 sums of 4 products, as float
  const __m256i pairs = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

AVX2_INLINE __m256i first_lanes(int nb) {  // the mask of 32-bit lanes 0..nb-1
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(nb), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2_INLINE __m256 halves8(const at::Half* p, int nb) {  // nb (1..8) fp16 values, the rest 0
  if (nb == 8) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  if (nb % 2 == 0)  // pairs of halves as 32-bit lanes
    return _mm256_cvtph_ps(_mm_maskload_epi32(reinterpret_cast<const int*>(p),
                                              _mm256_castsi256_si128(first_lanes(nb / 2))));
  alignas(16) uint16_t tmp[8] = {};
  for (int j = 0; j < nb; ++j) std::memcpy(tmp + j, p + j, sizeof(uint16_t));
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
}

AVX2_INLINE __m256 floats8(const float* p, int nb) {  // nb (1..8) floats, the rest 0
  return nb == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first_lanes(nb));
}

// A q5 block's fifth bits (bit j of `bits`: value j's) as 32 bytes, 16 where the bit is set: byte j
// takes byte j / 8 of the word, all its other bits set; it is all ones where bit j % 8 was set.
// `from` picks the word's bytes out of a broadcast: 0 for a 32-bit word, 4 for the upper word of a
// 64-bit broadcast (two blocks' words from one load).
AVX2_INLINE __m256i spread_fifth_bits(__m256i words, int64_t from) {
  const __m256i spread = _mm256_shuffle_epi8(
      words, _mm256_add_epi8(_mm256_set1_epi8(static_cast<char>(from)),
                             _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                0x0303030303030303)));
  const __m256i others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);  // byte j: all bits but j % 8
  const __m256i set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
  return _mm256_and_si256(set, _mm256_set1_epi8(16));
}

AVX2_INLINE __m256i fifth_bits(uint32_t bits) {
  return spread_fifth_bits(_mm256_set1_epi32(static_cast<int>(bits)), 0);
}

// Block g of a q4 / q5 row as 32 bytes (q, or u): the low or high nibbles of its pair's 32 bytes,
// and for q5 the fifth bits.
template <int FMT>
AVX2_INLINE __m256i nibble_block(const uint8_t* row4, const uint32_t* qh_row, int64_t g) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row4 + (g / 2) * QK));
  const __m256i q = _mm256_and_si256(g % 2 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(15));
  return FMT == kQ5P ? _mm256_or_si256(q, fifth_bits(qh_row[g])) : q;
}

// q8 (signed) and q4 a weight row at a time: weight row n against rows m0..m0+MB of x; MB a
// compile-time count so that the accumulators stay in registers (AVX2 has 16). Blocks go 8 at a
// time: their weight scales (fp16, converted by F16C) times x's scales as one float vector F, and
// block k of the 8 scales its integer dot product by F's lane k; q4's mins go into the same
// accumulator, once per 8 blocks. A single row of x (decode) takes the same path with MB = 1, so
// a row gives the same bits alone or in a batch.
template <int FMT, int MB>
AVX2 inline void tile_avx2(const Activations& a, const void* row, const at::Half* sc,
                           const at::Half* mn, float* y, int64_t N, int64_t n, int64_t m0) {
  const int64_t K = a.K, G = a.G;
  const int8_t* xq = a.q.data() + m0 * K;
  __m256 acc[MB];
  alignas(32) float F[MB][8];  // read back one lane at a time: a broadcast load, no shuffle
  for (int i = 0; i < MB; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t g0 = 0; g0 < G; g0 += 8) {
    const int nb = static_cast<int>(std::min<int64_t>(8, G - g0));
    const __m256 sw = halves8(sc + n * G + g0, nb);
    for (int i = 0; i < MB; ++i)
      _mm256_store_ps(F[i], _mm256_mul_ps(sw, floats8(a.d.data() + (m0 + i) * G + g0, nb)));
    if (FMT == kQ4) {
      const __m256 mw = halves8(mn + n * G + g0, nb);
      for (int i = 0; i < MB; ++i)
        acc[i] = _mm256_fmadd_ps(mw, floats8(a.s.data() + (m0 + i) * G + g0, nb), acc[i]);
    }
    for (int k = 0; k < nb; ++k) {
      const int64_t g = g0 + k;
      __m256i w, wu;  // wu: the unsigned operand (q4's q; q8's |q|, x taking q's signs)
      if (FMT == kQ4) {
        wu = nibble_block<kQ4>(static_cast<const uint8_t*>(row), nullptr, g);
      } else {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const int8_t*>(row) + g * QK));
        wu = _mm256_sign_epi8(w, w);
      }
      for (int i = 0; i < MB; ++i) {
        __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + i * K + g * QK));
        if (FMT == kQ8) x = _mm256_sign_epi8(x, w);
        acc[i] = _mm256_fmadd_ps(dot_u8s8_avx2(wu, x), _mm256_broadcast_ss(&F[i][k]), acc[i]);
      }
    }
  }
  for (int i = 0; i < MB; ++i) y[(m0 + i) * N + n] = hsum256(acc[i]);
}

template <int FMT>
AVX2 void rows_avx2(const Activations& a, const void* weights, const at::Half* sc,
                    const at::Half* mn, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t K = a.K;
  const int64_t row_bytes = FMT == kQ4 ? K / 2 : K;
  // Weight rows in panels that stay in L2 while every 4 rows of x (in L1) pass over them.
  const int64_t panel = std::max<int64_t>(1, (256 << 10) / row_bytes);
  for (int64_t p0 = n0; p0 < n1; p0 += panel) {
    const int64_t p1 = std::min(n1, p0 + panel);
    for (int64_t m0 = 0; m0 < a.M; m0 += MBLOCK) {
      for (int64_t n = p0; n < p1; ++n) {
        const void* row = static_cast<const uint8_t*>(weights) + n * row_bytes;
        switch (std::min(MBLOCK, a.M - m0)) {
          case 4: tile_avx2<FMT, 4>(a, row, sc, mn, y, N, n, m0); break;
          case 3: tile_avx2<FMT, 3>(a, row, sc, mn, y, N, n, m0); break;
          case 2: tile_avx2<FMT, 2>(a, row, sc, mn, y, N, n, m0); break;
          default: tile_avx2<FMT, 1>(a, row, sc, mn, y, N, n, m0);
        }
      }
    }
  }
}

// A q5 weight row as uint8 u, G blocks of 32 bytes (q8's uint8 blocks of the same values).
AVX2 inline void unpack_q5_row(const uint8_t* row4, const uint32_t* qh_row, int64_t G, uint8_t* u) {
  for (int64_t g = 0; g < G; ++g)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + g * QK), nibble_block<kQ5P>(row4, qh_row, g));
}

// q5 and uint8 q8 (Q5_0's values) go 8 weight rows (8 of y's columns) at a time, a column a lane:
// register j of a block holds bytes 4j..4j+3 of each of the 8 rows, so one `vpmaddubsw` against
// x's bytes 4j..4j+3 (broadcast) takes 4 products for each of the 8 columns, and a block's 8 of
// them sum in 16 bits (4 at a time: 4 * 2 * 31 * 127 < 2^15) before widening. Each column's block
// dot product is then an exact integer (Q5_0's -16 taken off as 16 * sum(x's q)), scaled by
// weight scale * x scale into its lane, block after block. Against a row at a time that is a
// third of the instructions per product (measured 1.5x on Qwen2.5-0.5B's gate/up at 8 rows, 1.9x
// at 32, 1.7x at 512 on an AVX2 EPYC). Signed q8 stays a row at a time (`tile_avx2`), and so does
// q4 below Q4_LANE_ROWS rows: for q4 the lanes' extra shuffles cost a decode more than the
// products save (SmolLM2 -15 %). From there on (quant.KERNEL_ROWS: a prompt chunk whose rows
// already differ from decode rows by float rounding, as the float matmul it replaces did) q4 goes
// through the lanes too, 1.5-2x the float matmul.
//
// More rows of x go through the 8 weight rows transposed once into a buffer (`lanes_tile`); a
// single row (decode) reads them as stored (`lanes_row`). Both get the same integers and apply
// the same float steps in the same order, so a row gets the same bits alone or in a batch.
constexpr int LANES = 8;
constexpr int64_t Q4_LANE_ROWS = 128;  // = genforge.model.quant.KERNEL_ROWS

// Whether AVX2 takes a layer of format `fmt` against M rows of x 8 weight rows at a time.
constexpr bool by_lanes(int fmt, int64_t M) {
  return fmt == kQ5 || fmt == kQ5P || (fmt == kQ4 && M >= Q4_LANE_ROWS);
}

// Block g of weight row n as 32 bytes: q4's q, q5's and uint8 q8's u.
template <int FMT>
AVX2_INLINE __m256i block_of(const void* w, const uint32_t* qh, int64_t K, int64_t n, int64_t g) {
  if (FMT == kQ5)
    return _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint8_t*>(w) + n * K + g * QK));
  return nibble_block<FMT>(static_cast<const uint8_t*>(w) + n * K / 2,
                           FMT == kQ5P ? qh + n * (K / QK) : nullptr, g);
}

AVX2_INLINE void transpose8(__m256 r[8]) {  // 8 x 8 32-bit lanes: r[j] lane c <- r[c] lane j
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// The scales of rows n0..n0+nc, block by block: out[g * 8 + c] (0 past nc).
AVX2 void lane_halves(const at::Half* p, int64_t G, int64_t n0, int nc, float* out) {
  for (int64_t g0 = 0; g0 < G; g0 += 8) {
    const int nb = static_cast<int>(std::min<int64_t>(8, G - g0));
    __m256 r[8];
    for (int c = 0; c < 8; ++c) r[c] = c < nc ? halves8(p + (n0 + c) * G + g0, nb) : _mm256_setzero_ps();
    transpose8(r);
    for (int k = 0; k < nb; ++k) _mm256_storeu_ps(out + (g0 + k) * LANES, r[k]);
  }
}

// One block's exact integer dot products (less Q5_0's 16 * sum(x's q)) into the lanes' sums, each
// scaled by its weight scale * x's scale (and q4's min term).
template <int FMT>
AVX2_INLINE __m256 scaled(__m256 acc, __m256i dot, const Activations& a, int64_t m, int64_t g,
                          const float* sw, const float* mn) {
  const int64_t b = m * a.G + g;
  if (FMT != kQ4) dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(Q5_OFFSET * a.sum[b]));
  const __m256 f = _mm256_mul_ps(_mm256_loadu_ps(sw + g * LANES), _mm256_set1_ps(a.d[b]));
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), f, acc);
  if (FMT == kQ4)  // q4's mins: min * d * sum(x's q)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(mn + g * LANES), _mm256_set1_ps(a.s[b]), acc);
  return acc;
}

AVX2_INLINE void store_lanes(__m256 v, float* y, int nc) {
  if (nc == LANES) _mm256_storeu_ps(y, v);
  else _mm256_maskstore_ps(y, first_lanes(nc), v);
}

// 8 columns' 16-bit products (`vpmaddubsw` of each one's block against x's) summed to one exact
// 32-bit dot product a lane, by interleaving and adding (one-cycle shuffles, not `vphadd`): two
// columns' pairs of lanes side by side, then four columns', each lane a sum of at most 4
// products-pairs (4 * 2 * 31 * 127 < 2^15), then widened and the two halves added.
AVX2_INLINE __m256i fold32(__m256i a, __m256i b) {  // 16-bit lanes (a0 a1 b0 b1 ...): 2 columns
  return _mm256_add_epi16(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
}

AVX2_INLINE __m256i fold64(__m256i a, __m256i b) {  // (a a b b c c d d) a half: 4 columns
  return _mm256_add_epi16(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}

AVX2_INLINE __m256i sum_columns(const __m256i p[8]) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i t0 = _mm256_madd_epi16(fold64(fold32(p[0], p[1]), fold32(p[2], p[3])), ones);
  const __m256i t1 = _mm256_madd_epi16(fold64(fold32(p[4], p[5]), fold32(p[6], p[7])), ones);
  return _mm256_add_epi32(_mm256_permute2x128_si256(t0, t1, 0x20),
                          _mm256_permute2x128_si256(t0, t1, 0x31));
}

// Row m of x against weight rows n0..n0+nc as stored, each row read from end to end as the cache
// prefetchers like it (8 rows side by side ran 1.3x slower from memory): its blocks' 16-bit
// products 8 blocks at a time summed to one lane each into `dots`, then per 8 blocks the 8 rows
// turned to one lane each (a transpose) and scaled block by block as the tiles scale theirs.
template <int FMT>
AVX2 void lanes_row(const Activations& a, int64_t m, const void* w, const uint32_t* qh,
                    const float* sw, int64_t n0, int nc, float* y, int32_t* dots) {
  const int64_t K = a.K, G = a.G, chunks = (G + 7) / 8;
  const int8_t* xq = a.q.data() + m * K;
  for (int c = 0; c < LANES; ++c) {
    const int64_t n = n0 + c;
    for (int64_t ch = 0; ch < chunks; ++ch) {
      __m256i p[8];  // a fixed count of blocks, so that p stays in registers
      const int64_t g0 = ch * 8;
      const int nb = c < nc ? static_cast<int>(std::min<int64_t>(8, G - g0)) : 0;
      if (FMT == kQ5) {  // uint8 u, a block at a time (G may be odd)
        const uint8_t* row = static_cast<const uint8_t*>(w) + n * K + g0 * QK;
        for (int k = 0; k < 8; ++k)
          p[k] = k < nb ? _mm256_maddubs_epi16(
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k * QK)),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + (g0 + k) * QK)))
                        : _mm256_setzero_si256();
      } else {  // q5: a pair of blocks from each 32 bytes (G even)
        const uint8_t* row4 = static_cast<const uint8_t*>(w) + n * K / 2;
        const __m256i low = _mm256_set1_epi8(15);
        for (int k = 0; k < 8; k += 2) {
          if (k >= nb) {
            p[k] = p[k + 1] = _mm256_setzero_si256();
            continue;
          }
          const int64_t g = g0 + k;
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row4 + g * QK / 2));
          __m256i u0 = _mm256_and_si256(v, low), u1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
          if (FMT == kQ5P) {  // the two blocks' words in one load
            int64_t both;
            std::memcpy(&both, qh + n * G + g, sizeof(both));
            const __m256i words = _mm256_set1_epi64x(both);
            u0 = _mm256_or_si256(u0, spread_fifth_bits(words, 0));
            u1 = _mm256_or_si256(u1, spread_fifth_bits(words, 4));
          }
          const __m256i* x = reinterpret_cast<const __m256i*>(xq + g * QK);
          p[k] = _mm256_maddubs_epi16(u0, _mm256_loadu_si256(x));
          p[k + 1] = _mm256_maddubs_epi16(u1, _mm256_loadu_si256(x + 1));
        }
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(dots + (ch * LANES + c) * 8), sum_columns(p));
    }
  }
  __m256 acc = _mm256_setzero_ps();
  for (int64_t ch = 0; ch < chunks; ++ch) {
    __m256 d[8];
    for (int c = 0; c < LANES; ++c)
      d[c] = _mm256_load_ps(reinterpret_cast<const float*>(dots + (ch * LANES + c) * 8));
    transpose8(d);  // d[k]: block 8 ch + k of the 8 rows
    for (int64_t k = 0; k < std::min<int64_t>(8, G - ch * 8); ++k)
      acc = scaled<FMT>(acc, _mm256_castps_si256(d[k]), a, m, ch * 8 + k, sw, nullptr);
  }
  store_lanes(acc, y, nc);
}

// Rows m0..m0+MB of x against 8 weight rows transposed (`wt`: per block 8 registers of 32 bytes).
template <int FMT, int MB>
AVX2 inline void lanes_tile(const Activations& a, int64_t m0, const uint8_t* wt, const float* sw,
                            const float* mn, int nc, float* y, int64_t N) {
  const int64_t K = a.K;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    const __m256i* W = reinterpret_cast<const __m256i*>(wt + g * LANES * QK);
    __m256i w[8];
    for (int j = 0; j < 8; ++j) w[j] = _mm256_load_si256(W + j);
    for (int i = 0; i < MB; ++i) {
      const int8_t* xs = a.q.data() + (m0 + i) * K + g * QK;
      __m256i half[2];
      for (int h = 0; h < 2; ++h) {  // 4 quads in 16 bits, then widened
        __m256i s16 = _mm256_setzero_si256();
        for (int j = 4 * h; j < 4 * h + 4; ++j) {
          int32_t quad;
          std::memcpy(&quad, xs + 4 * j, sizeof(quad));
          s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[j], _mm256_set1_epi32(quad)));
        }
        half[h] = _mm256_madd_epi16(s16, ones);
      }
      acc[i] = scaled<FMT>(acc[i], _mm256_add_epi32(half[0], half[1]), a, m0 + i, g, sw, mn);
    }
  }
  for (int i = 0; i < MB; ++i) store_lanes(acc[i], y + (m0 + i) * N, nc);
}

template <int FMT>
AVX2 void rows_lanes_avx2(const Activations& a, const void* w, const at::Half* sc,
                          const at::Half* mn, const uint32_t* qh, float* y, int64_t N, int64_t n0,
                          int64_t n1) {
  const int64_t K = a.K, G = a.G;
  std::vector<float> sw(G * LANES), mw(FMT == kQ4 ? G * LANES : 0);
  // a single row: the 8 rows' block sums (dots, G rounded up to 8 blocks); more: the 8 rows
  // transposed (wt); either 32-byte aligned
  const int64_t bytes = a.M == 1 ? (G + 7) / 8 * LANES * 32 : G * LANES * QK;
  std::vector<uint8_t> buffer(bytes + 32);
  uint8_t* wt = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buffer.data()) + 31) & ~uintptr_t(31));
  int32_t* dots = reinterpret_cast<int32_t*>(wt);
  for (int64_t c0 = n0; c0 < n1; c0 += LANES) {
    const int nc = static_cast<int>(std::min<int64_t>(LANES, n1 - c0));
    lane_halves(sc, G, c0, nc, sw.data());
    if constexpr (FMT == kQ4) {
      lane_halves(mn, G, c0, nc, mw.data());
    } else if (a.M == 1) {
      lanes_row<FMT>(a, 0, w, qh, sw.data(), c0, nc, y + c0, dots);
      continue;
    }
    for (int64_t g = 0; g < G; ++g) {
      __m256 r[8];
      for (int c = 0; c < 8; ++c)
        r[c] = c < nc ? _mm256_castsi256_ps(block_of<FMT>(w, qh, K, c0 + c, g)) : _mm256_setzero_ps();
      transpose8(r);
      for (int j = 0; j < 8; ++j) _mm256_store_ps(reinterpret_cast<float*>(wt + (g * LANES + j) * QK), r[j]);
    }
    for (int64_t m0 = 0, mb; m0 < a.M; m0 += mb) {
      mb = a.M - m0 == 5 ? 3 : std::min(MBLOCK, a.M - m0);  // 5 rows as 3 + 2, not 4 + 1
      float* yc = y + c0;
      switch (mb) {
        case 4: lanes_tile<FMT, 4>(a, m0, wt, sw.data(), mw.data(), nc, yc, N); break;
        case 3: lanes_tile<FMT, 3>(a, m0, wt, sw.data(), mw.data(), nc, yc, N); break;
        case 2: lanes_tile<FMT, 2>(a, m0, wt, sw.data(), mw.data(), nc, yc, N); break;
        default: lanes_tile<FMT, 1>(a, m0, wt, sw.data(), mw.data(), nc, yc, N);
      }
    }
  }
}

// -- AVX-512 with VNNI ---------------------------------------------------------------------------


// Blocks go 16 at a time (8 pairs): their weight scales (fp16) times x's scales as one float vector
// F; pair k of them uses F's lanes 2k (for dot lanes 0-7) and 2k+1 (lanes 8-15).
AVX512 inline __m512i pair_index(int k) {
  return _mm512_set_epi32(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1,
                          2 * k + 1, 2 * k + 1, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k,
                          2 * k);
}

AVX512 inline __m512 load_halves(const at::Half* p, __mmask16 k) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

// Weight row n against rows m0..m0+MB of x, MB a compile-time count so that the accumulators stay
// in registers (measured on Qwen2.5-0.5B's layers: 12-18 % faster at 16-32 rows than a run-time
// count of up to 4; the same float operations in the same order, so the same bits).
template <int FMT, int MB>
AVX512 inline void tile_avx512(const Activations& a, const uint8_t* row4, const int8_t* row8,
                               const at::Half* sc, const at::Half* mn, const uint32_t* qh_row,
                               const __m512i* index, float* y, int64_t N, int64_t n, int64_t m0) {
  const int64_t K = a.K, G = a.G, pairs = G / 2;
  const __m256i low = _mm256_set1_epi8(15);
  __m512 acc[MB], minacc[MB], F[MB];
  for (int i = 0; i < MB; ++i) acc[i] = minacc[i] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < 2 * pairs; g0 += 16) {
    const int nb = static_cast<int>(std::min<int64_t>(16, 2 * pairs - g0));
    const __mmask16 km = nb == 16 ? 0xFFFF : static_cast<__mmask16>((1u << nb) - 1);
    const __m512 sw = load_halves(sc + n * G + g0, km);
    const __m512 mw = FMT == kQ4   ? load_halves(mn + n * G + g0, km)
                      : FMT != kQ8 ? _mm512_mul_ps(sw, _mm512_set1_ps(-float(Q5_OFFSET)))
                                   : _mm512_setzero_ps();
    for (int i = 0; i < MB; ++i) {
      const int64_t m = m0 + i;
      F[i] = _mm512_mul_ps(sw, _mm512_maskz_loadu_ps(km, a.d.data() + m * G + g0));
      if (FMT != kQ8)
        minacc[i] =
            _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(km, a.s.data() + m * G + g0), minacc[i]);
    }
    for (int k = 0; k < nb / 2; ++k) {
      const int64_t p = g0 / 2 + k;
      __m512i w;
      __mmask64 neg = 0;
      if (FMT == kQ4) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row4 + p * QK));
        const __m256i lo = _mm256_and_si256(v, low);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
      } else if (FMT == kQ5P) {  // the pair's two blocks as q4's, with their fifth bits
        w = _mm512_inserti64x4(_mm512_castsi256_si512(nibble_block<FMT>(row4, qh_row, 2 * p)),
                               nibble_block<FMT>(row4, qh_row, 2 * p + 1), 1);
      } else if (FMT == kQ5) {
        w = _mm512_loadu_si512(row8 + p * 2 * QK);
      } else {
        const __m512i raw = _mm512_loadu_si512(row8 + p * 2 * QK);
        neg = _mm512_movepi8_mask(raw);
        w = _mm512_abs_epi8(raw);
      }
      for (int i = 0; i < MB; ++i) {
        __m512i x = _mm512_loadu_si512(a.q.data() + (m0 + i) * K + p * 2 * QK);
        if (FMT == kQ8) x = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
        const __m512 f = _mm512_permutexvar_ps(index[k], F[i]);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), f, acc[i]);
      }
    }
  }
  for (int i = 0; i < MB; ++i) {
    const int64_t m = m0 + i;
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[i], minacc[i]));
    if (FMT != kQ4 && FMT != kQ5P && G % 2) {  // an odd last block (q4, q5: K a multiple of 64)
      const int64_t g = G - 1;
      const int8_t* ws = row8 + g * QK;
      const int8_t* xs = a.q.data() + m * K + g * QK;
      const int offset = FMT == kQ5 ? Q5_OFFSET : 0;
      int dot = 0;
      for (int j = 0; j < QK; ++j) dot += (ws[j] - offset) * xs[j];
      sum += half(sc, n * G + g) * a.d[m * G + g] * dot;
    }
    y[m * N + n] = sum;
  }
}

template <int FMT>
AVX512 void tiles_avx512(int64_t mb, const Activations& a, const uint8_t* row4, const int8_t* row8,
                         const at::Half* sc, const at::Half* mn, const uint32_t* qh_row,
                         const __m512i* index, float* y, int64_t N, int64_t n, int64_t m0) {
  switch (mb) {
    case 8: tile_avx512<FMT, 8>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0); break;
    case 7: tile_avx512<FMT, 7>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0); break;
    case 6: tile_avx512<FMT, 6>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0); break;
    case 5: tile_avx512<FMT, 5>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0); break;
    case 4: tile_avx512<FMT, 4>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0); break;
    case 3: tile_avx512<FMT, 3>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0); break;
    case 2: tile_avx512<FMT, 2>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0); break;
    default: tile_avx512<FMT, 1>(a, row4, row8, sc, mn, qh_row, index, y, N, n, m0);
  }
}

template <int FMT>
AVX512 void rows_avx512(const Activations& a, const void* weights, const at::Half* sc,
                        const at::Half* mn, const uint32_t* qh, float* y, int64_t N, int64_t n0,
                        int64_t n1) {
  const int64_t K = a.K;
  __m512i index[8];
  for (int k = 0; k < 8; ++k) index[k] = pair_index(k);
  // q5 against more rows of x than a tile takes: each weight row unpacked once to uint8 u (q8's
  // uint8 blocks), not again for every tile
  const bool unpack = FMT == kQ5P && a.M > MBLOCK512;
  std::vector<uint8_t> u(unpack ? K : 0);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row4 = static_cast<const uint8_t*>(weights) + n * K / 2;
    const int8_t* row8 = static_cast<const int8_t*>(weights) + n * K;
    const uint32_t* qh_row = FMT == kQ5P ? qh + n * a.G : nullptr;
    if (unpack) unpack_q5_row(row4, qh_row, a.G, u.data());
    for (int64_t m0 = 0; m0 < a.M; m0 += MBLOCK512) {
      const int64_t mb = std::min(MBLOCK512, a.M - m0);
      if (unpack)
        tiles_avx512<kQ5>(mb, a, nullptr, reinterpret_cast<const int8_t*>(u.data()), sc, nullptr,
                          nullptr, index, y, N, n, m0);
      else
        tiles_avx512<FMT>(mb, a, row4, row8, sc, mn, qh_row, index, y, N, n, m0);
    }
  }
}

// One row of x against R weight rows at a time (decode: M == 1): R independent accumulator chains,
// and x's blocks loaded once for all R rows.
template <int FMT>
AVX512 void rows1_avx512(const Activations& a, const void* weights, const at::Half* sc,
                         const at::Half* mn, const uint32_t* qh, float* y, int64_t N, int64_t n0,
                         int64_t n1) {
  constexpr int R = 4;
  const int64_t K = a.K, G = a.G, pairs = G / 2;
  const __m256i low = _mm256_set1_epi8(15);
  __m512i index[8];
  for (int k = 0; k < 8; ++k) index[k] = pair_index(k);
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    __m512 acc[R], minacc[R], F[R];
    for (int r = 0; r < R; ++r) acc[r] = minacc[r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < 2 * pairs; g0 += 16) {
      const int nb = static_cast<int>(std::min<int64_t>(16, 2 * pairs - g0));
      const __mmask16 km = nb == 16 ? 0xFFFF : static_cast<__mmask16>((1u << nb) - 1);
      const __m512 xd = _mm512_maskz_loadu_ps(km, a.d.data() + g0);
      const __m512 xsum =
          FMT != kQ8 ? _mm512_maskz_loadu_ps(km, a.s.data() + g0) : _mm512_setzero_ps();
      for (int r = 0; r < R; ++r) {
        const __m512 sw = load_halves(sc + (n + r) * G + g0, km);
        F[r] = _mm512_mul_ps(sw, xd);
        if (FMT == kQ4)
          minacc[r] = _mm512_fmadd_ps(load_halves(mn + (n + r) * G + g0, km), xsum, minacc[r]);
        if (FMT == kQ5 || FMT == kQ5P)
          minacc[r] = _mm512_fmadd_ps(_mm512_mul_ps(sw, _mm512_set1_ps(-float(Q5_OFFSET))), xsum, minacc[r]);
      }
      for (int k = 0; k < nb / 2; ++k) {
        const int64_t p = g0 / 2 + k;
        const __m512i x = _mm512_loadu_si512(a.q.data() + p * 2 * QK);
        for (int r = 0; r < R; ++r) {
          __m512i w, xr = x;
          if (FMT == kQ4) {
            const uint8_t* row4 = static_cast<const uint8_t*>(weights) + (n + r) * K / 2;
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row4 + p * QK));
            const __m256i lo = _mm256_and_si256(v, low);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
          } else if (FMT == kQ5P) {
            const uint8_t* row4 = static_cast<const uint8_t*>(weights) + (n + r) * K / 2;
            const uint32_t* qh_row = qh + (n + r) * G;
            w = _mm512_inserti64x4(_mm512_castsi256_si512(nibble_block<FMT>(row4, qh_row, 2 * p)),
                                   nibble_block<FMT>(row4, qh_row, 2 * p + 1), 1);
          } else if (FMT == kQ5) {
            w = _mm512_loadu_si512(static_cast<const int8_t*>(weights) + (n + r) * K + p * 2 * QK);
          } else {
            const int8_t* row8 = static_cast<const int8_t*>(weights) + (n + r) * K;
            const __m512i raw = _mm512_loadu_si512(row8 + p * 2 * QK);
            xr = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(raw), _mm512_setzero_si512(), x);
            w = _mm512_abs_epi8(raw);
          }
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xr);
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(index[k], F[r]),
                                   acc[r]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], minacc[r]));
      if (FMT != kQ4 && FMT != kQ5P && G % 2) {  // an odd last block (q4 and q5 have none)
        const int64_t g = G - 1;
        const int8_t* ws = static_cast<const int8_t*>(weights) + (n + r) * K + g * QK;
        const int8_t* xs = a.q.data() + g * QK;
        const int offset = FMT == kQ5 ? Q5_OFFSET : 0;
        int dot = 0;
        for (int j = 0; j < QK; ++j) dot += (ws[j] - offset) * xs[j];
        sum += half(sc, (n + r) * G + g) * a.d[g] * dot;
      }
      y[n + r] = sum;
    }
  }
  if (n < n1) rows_avx512<FMT>(a, weights, sc, mn, qh, y, N, n, n1);
}

// -- dispatch ------------------------------------------------------------------------------------

enum class Isa { portable, avx2, avx512 };

Isa detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::avx2;
  return Isa::portable;
}

Isa chosen = detect();

const char* isa_name() {
  switch (chosen) {
    case Isa::avx512: return "avx512-vnni";
    case Isa::avx2: return "avx2";
    default: return "portable";
  }
}

void set_isa(const std::string& name) {  // for tests: every path the CPU can run, on one machine
  const Isa best = detect();
  Isa want = name == "avx512-vnni" ? Isa::avx512 : name == "avx2" ? Isa::avx2 : Isa::portable;
  TORCH_CHECK(name == "avx512-vnni" || name == "avx2" || name == "portable",
              "unknown kernel path ", name);
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(best), "this CPU cannot run ", name);
  chosen = want;
}

void check_x(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "x must be a contiguous float32 (M, K) tensor");
  TORCH_CHECK(x.size(1) == K && K % QK == 0, "x has ", x.size(1), " inputs, the weight ", K);
}

int64_t grain(int64_t M) {  // output rows per task: enough work to be worth a thread
  return std::max<int64_t>(8, 256 / std::max<int64_t>(M, 1));
}

// A quantized layer as the kernels read it: its format, weight and scales, `extra` (q4's mins or
// q5's fifth bits), optional float32 bias.
struct QLinear {
  int fmt = kQ8;
  torch::Tensor qw, scales, extra, bias;
  int64_t N = 0, K = 0;
};

void check_halves(const torch::Tensor& t, int64_t N, int64_t K, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kHalf && t.is_contiguous() && t.numel() == N * (K / QK),
              what, ": float16 (N, K/32)");
}

QLinear q4_linear(const torch::Tensor& qw, const torch::Tensor& scales, const torch::Tensor& mins) {
  const int64_t N = qw.size(0), K = qw.size(1) * 2;
  TORCH_CHECK(K % (2 * QK) == 0, "q4 needs inputs in multiples of 64, got ", K);
  TORCH_CHECK(qw.scalar_type() == torch::kUInt8 && qw.is_contiguous(), "q4 weight: uint8 (N, K/2)");
  check_halves(scales, N, K, "q4 scales");
  check_halves(mins, N, K, "q4 mins");
  return QLinear{kQ4, qw, scales, mins, torch::Tensor(), N, K};
}

QLinear q5_linear(const torch::Tensor& qw, const torch::Tensor& scales, const torch::Tensor& qh) {
  const int64_t N = qw.size(0), K = qw.size(1) * 2;
  TORCH_CHECK(K % (2 * QK) == 0, "q5 needs inputs in multiples of 64, got ", K);
  TORCH_CHECK(qw.scalar_type() == torch::kUInt8 && qw.is_contiguous(), "q5 weight: uint8 (N, K/2)");
  check_halves(scales, N, K, "q5 scales");
  TORCH_CHECK(qh.scalar_type() == torch::kInt32 && qh.is_contiguous() &&
                  qh.numel() == N * (K / QK),
              "q5 fifth bits: int32 (N, K/32)");
  return QLinear{kQ5P, qw, scales, qh, torch::Tensor(), N, K};
}

QLinear q8_linear(const torch::Tensor& qw, const torch::Tensor& scales) {
  const int64_t N = qw.size(0), K = qw.size(1);
  TORCH_CHECK(K % QK == 0, "q8 needs inputs in multiples of 32, got ", K);
  TORCH_CHECK((qw.scalar_type() == torch::kInt8 || qw.scalar_type() == torch::kUInt8) &&
                  qw.is_contiguous(),
              "q8 weight: int8 (N, K), or uint8 holding Q5_0's 0..31");
  check_halves(scales, N, K, "q8 scales");
  return QLinear{qw.scalar_type() == torch::kUInt8 ? kQ5 : kQ8, qw, scales, torch::Tensor(),
                 torch::Tensor(), N, K};
}

// The layer of weight `qw`, `scales` and `extra`: q4 where extra is float16 (mins), q5 where it is
// int32 (fifth bits), else q8.
QLinear make_linear(const torch::Tensor& qw, const torch::Tensor& scales,
                    const c10::optional<torch::Tensor>& extra) {
  if (!extra.has_value()) return q8_linear(qw, scales);
  return extra->scalar_type() == torch::kInt32 ? q5_linear(qw, scales, *extra)
                                               : q4_linear(qw, scales, *extra);
}

template <int FMT>
void rows(Isa isa, const Activations& a, const QLinear& L, float* y, int64_t n0, int64_t n1) {
  const void* w = L.qw.data_ptr();
  const at::Half* sc = L.scales.data_ptr<at::Half>();
  const at::Half* mn = FMT == kQ4 ? L.extra.data_ptr<at::Half>() : nullptr;
  const uint32_t* qh =
      FMT == kQ5P ? reinterpret_cast<const uint32_t*>(L.extra.data_ptr<int32_t>()) : nullptr;
  if (isa == Isa::avx512) {
    if (a.M == 1) rows1_avx512<FMT>(a, w, sc, mn, qh, y, L.N, n0, n1);
    else rows_avx512<FMT>(a, w, sc, mn, qh, y, L.N, n0, n1);
  } else if (isa == Isa::avx2) {
    if constexpr (FMT == kQ8) rows_avx2<kQ8>(a, w, sc, mn, y, L.N, n0, n1);
    else if (by_lanes(FMT, a.M)) rows_lanes_avx2<FMT>(a, w, sc, mn, qh, y, L.N, n0, n1);
    else rows_avx2<kQ4>(a, w, sc, mn, y, L.N, n0, n1);  // q4 below Q4_LANE_ROWS
  } else {
    rows_ref<FMT>(a, w, sc, mn, qh, y, L.N, n0, n1);
  }
}

// y (M, N) = x (M, K) @ W^T (+ bias), all float32 row-major
void matmul_into(const float* x, int64_t M, const QLinear& L, float* y) {
  const Activations a = quantize(x, M, L.K);
  const int64_t N = L.N;
  const Isa isa = chosen;
  // where AVX2 goes 8 weight rows (output columns) at a time, the threads split at groups of 8
  const int64_t unit = isa == Isa::avx2 && by_lanes(L.fmt, M) ? LANES : 1;
  at::parallel_for(0, (N + unit - 1) / unit, std::max<int64_t>(1, grain(M) / unit), [&](int64_t u0, int64_t u1) {
    const int64_t n0 = u0 * unit, n1 = std::min(N, u1 * unit);
    switch (L.fmt) {
      case kQ4: rows<kQ4>(isa, a, L, y, n0, n1); break;
      case kQ5P: rows<kQ5P>(isa, a, L, y, n0, n1); break;
      case kQ5: rows<kQ5>(isa, a, L, y, n0, n1); break;
      default: rows<kQ8>(isa, a, L, y, n0, n1);
    }
  });
  if (L.bias.defined()) {
    const float* b = L.bias.data_ptr<float>();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += b[n];
  }
}

torch::Tensor matmul(const torch::Tensor& x, const QLinear& L) {
  check_x(x, L.K);
  auto y = torch::empty({x.size(0), L.N}, x.options());
  matmul_into(x.data_ptr<float>(), x.size(0), L, y.data_ptr<float>());
  return y;
}

torch::Tensor q4_matmul(torch::Tensor x, torch::Tensor qw, torch::Tensor scales,
                        torch::Tensor mins) {
  return matmul(x, q4_linear(qw, scales, mins));
}

torch::Tensor q8_matmul(torch::Tensor x, torch::Tensor qw, torch::Tensor scales) {
  return matmul(x, q8_linear(qw, scales));
}

torch::Tensor q5_matmul(torch::Tensor x, torch::Tensor qw, torch::Tensor scales, torch::Tensor qh) {
  return matmul(x, q5_linear(qw, scales, qh));
}

// -- paged attention for decoding rows -------------------------------------------------------------
//
// One new token per sequence: its query heads attend over the sequence's keys and values where the
// paged cache keeps them (slot index per position), without gathering them into a new tensor first.
// The query heads that share a key/value head go together, so each key and value is read once.

// One query head over keys/values at `slots[first..len)`, each row of D floats at
// pool + slot * row_stride. scores: scratch of len - first floats.
template <typename T>
void attend_ref(const float* q, const T* kpool, const T* vpool, const int64_t* slots,
                int64_t first, int64_t len, int64_t D, int64_t row_stride, float scale,
                float* scores, float* out) {
  const int64_t n = len - first;
  float mx = -INFINITY;
  for (int64_t t = 0; t < n; ++t) {
    const T* k = kpool + slots[first + t] * row_stride;
    float dot = 0.f;
    for (int64_t d = 0; d < D; ++d) dot += q[d] * static_cast<float>(k[d]);
    scores[t] = dot * scale;
    mx = std::max(mx, scores[t]);
  }
  float sum = 0.f;
  for (int64_t t = 0; t < n; ++t) sum += scores[t] = std::exp(scores[t] - mx);
  for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  for (int64_t t = 0; t < n; ++t) {
    const T* v = vpool + slots[first + t] * row_stride;
    const float p = scores[t] / sum;
    for (int64_t d = 0; d < D; ++d) out[d] += p * static_cast<float>(v[d]);
  }
}

// The vector body, written once for both instruction sets (a template would be compiled without
// their target attributes). D is a multiple of W, at most 16 * W (checked by the caller).
#define ATTEND_BODY(W, V, Load, KLoad, Fma, Set1, Hsum, Exp, Store, Sub, Add)                 \
  const int64_t n = len - first, chunks = D / W;                                              \
  V qv[16];                                                                                   \
  for (int64_t c = 0; c < chunks; ++c) qv[c] = Load(q + c * W);                               \
  float mx = -INFINITY;                                                                       \
  for (int64_t t = 0; t < n; ++t) {                                                           \
    const T* k = kpool + slots[first + t] * row_stride;                                       \
    V acc = Set1(0.f);                                                                        \
    for (int64_t c = 0; c < chunks; ++c) acc = Fma(qv[c], KLoad(k + c * W), acc);             \
    scores[t] = Hsum(acc) * scale;                                                            \
    mx = std::max(mx, scores[t]);                                                             \
  }                                                                                           \
  V sum = Set1(0.f);                                                                          \
  const V vmx = Set1(mx);                                                                     \
  int64_t t = 0;                                                                              \
  for (; t + W <= n; t += W) {                                                                \
    const V e = Exp(Sub(Load(scores + t), vmx));                                              \
    Store(scores + t, e);                                                                     \
    sum = Add(sum, e);                                                                        \
  }                                                                                           \
  float total = Hsum(sum);                                                                    \
  for (; t < n; ++t) total += scores[t] = std::exp(scores[t] - mx);                          \
  const float inv = 1.f / total;                                                              \
  V o[16];                                                                                    \
  for (int64_t c = 0; c < chunks; ++c) o[c] = Set1(0.f);                                      \
  for (t = 0; t < n; ++t) {                                                                   \
    const T* v = vpool + slots[first + t] * row_stride;                                       \
    const V p = Set1(scores[t] * inv);                                                        \
    for (int64_t c = 0; c < chunks; ++c) o[c] = Fma(p, KLoad(v + c * W), o[c]);               \
  }                                                                                           \
  for (int64_t c = 0; c < chunks; ++c) Store(out + c * W, o[c]);

// A pool row's W values as floats: float32, bf16 (the high half of a float32) or fp16 (F16C).
AVX512 inline __m512 kload16(const float* p) { return _mm512_loadu_ps(p); }
AVX512 inline __m512 kload16(const at::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
AVX512 inline __m512 kload16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
AVX2 inline __m256 kload8(const float* p) { return _mm256_loadu_ps(p); }
AVX2 inline __m256 kload8(const at::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
AVX2 inline __m256 kload8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <typename T>
AVX512 void attend_avx512(const float* q, const T* kpool, const T* vpool, const int64_t* slots,
                          int64_t first, int64_t len, int64_t D, int64_t row_stride, float scale,
                          float* scores, float* out) {
  ATTEND_BODY(16, __m512, _mm512_loadu_ps, kload16, _mm512_fmadd_ps, _mm512_set1_ps,
              _mm512_reduce_add_ps, exp512, _mm512_storeu_ps, _mm512_sub_ps, _mm512_add_ps)
}

template <typename T>
AVX2 void attend_avx2(const float* q, const T* kpool, const T* vpool, const int64_t* slots,
                      int64_t first, int64_t len, int64_t D, int64_t row_stride, float scale,
                      float* scores, float* out) {
  ATTEND_BODY(8, __m256, _mm256_loadu_ps, kload8, _mm256_fmadd_ps, _mm256_set1_ps, hsum256,
              exp256, _mm256_storeu_ps, _mm256_sub_ps, _mm256_add_ps)
}

// q (B, H, D); pools (slots, Hkv, D); index (B, W) slot of each position; lengths (B,);
// window: attend to the last `window` positions only (0: all). -> out (B, H, D)
template <typename T>
void attend_rows(const float* qp, int64_t q_stride, int64_t B, int64_t H, int64_t D, const T* kp,
                 const T* vp, int64_t Hkv, const int64_t* ip, int64_t W, const int64_t* lp,
                 float scale, int64_t window, float* op) {
  const int64_t G = H / Hkv, row_stride = Hkv * D;
  // The AVX2 body is the faster one where both fit (measured: 54 vs 86 us for 9 heads of 64 over
  // 700 keys; its horizontal sums are cheaper); AVX-512 takes heads of up to 256.
  Isa isa = chosen;
  if (isa == Isa::avx512 && D % 8 == 0 && D <= 128) isa = Isa::avx2;
  if ((isa == Isa::avx512 && (D % 16 || D > 256)) || (isa == Isa::avx2 && (D % 8 || D > 128)))
    isa = Isa::portable;
  // one job per query head: more jobs than key/value heads, for the threads to share evenly
  at::parallel_for(0, B * H, 1, [&](int64_t a, int64_t b) {
    std::vector<float> scores(W);
    for (int64_t job = a; job < b; ++job) {
      const int64_t bi = job / H, h = job % H, kv = h / G, len = lp[bi];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const float* qh = qp + bi * q_stride + h * D;
      float* oh = op + (bi * H + h) * D;
      const int64_t* slots = ip + bi * W;
      const T* k = kp + kv * D;
      const T* v = vp + kv * D;
      if (isa == Isa::avx512)
        attend_avx512<T>(qh, k, v, slots, first, len, D, row_stride, scale, scores.data(), oh);
      else if (isa == Isa::avx2)
        attend_avx2<T>(qh, k, v, slots, first, len, D, row_stride, scale, scores.data(), oh);
      else
        attend_ref<T>(qh, k, v, slots, first, len, D, row_stride, scale, scores.data(), oh);
    }
  });
}

void check_pools(const torch::Tensor& kpool, const torch::Tensor& vpool) {
  TORCH_CHECK(kpool.dim() == 3 && vpool.dim() == 3 && kpool.sizes() == vpool.sizes(),
              "the pools must be (slots, Hkv, D), alike");
  TORCH_CHECK(kpool.scalar_type() == vpool.scalar_type(), "the pools differ in dtype");
  TORCH_CHECK(kpool.is_contiguous() && vpool.is_contiguous(), "the pools must be contiguous");
}

// q: row b's H heads of D at q + b * q_stride (a fused q/k/v row, or (B, H, D))
void attend_into(const float* q, int64_t q_stride, int64_t B, int64_t H, const torch::Tensor& kpool,
                 const torch::Tensor& vpool, const int64_t* index, int64_t W,
                 const int64_t* lengths, float scale, int64_t window, float* out) {
  const int64_t D = kpool.size(2), Hkv = kpool.size(1);
  switch (kpool.scalar_type()) {
    case torch::kFloat32:
      attend_rows<float>(q, q_stride, B, H, D, kpool.data_ptr<float>(), vpool.data_ptr<float>(), Hkv, index,
                         W, lengths, scale, window, out);
      break;
    case torch::kBFloat16:
      attend_rows<at::BFloat16>(q, q_stride, B, H, D, kpool.data_ptr<at::BFloat16>(),
                                vpool.data_ptr<at::BFloat16>(), Hkv, index, W, lengths, scale,
                                window, out);
      break;
    case torch::kHalf:
      attend_rows<at::Half>(q, q_stride, B, H, D, kpool.data_ptr<at::Half>(), vpool.data_ptr<at::Half>(),
                            Hkv, index, W, lengths, scale, window, out);
      break;
    default:
      TORCH_CHECK(false, "the KV pools must be float32, bfloat16 or float16");
  }
}

// q (B, H, D) float32; pools (slots, Hkv, D) float32, bfloat16 or float16; index (B, W) slot of
// each position; lengths (B,); window: attend to the last `window` positions only (0: all).
// -> (B, H, D) float32
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor kpool, torch::Tensor vpool,
                               torch::Tensor index, torch::Tensor lengths, double scale,
                               int64_t window) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32, "q: float32 (B, H, D)");
  check_pools(kpool, vpool);
  TORCH_CHECK(index.is_contiguous() && index.scalar_type() == torch::kLong &&
                  lengths.scalar_type() == torch::kLong,
              "index and lengths are int64, the index contiguous");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = kpool.size(1);
  TORCH_CHECK(kpool.size(2) == D && H % Hkv == 0 && index.size(0) == B && lengths.numel() == B,
              "shapes do not match");
  auto qc = q.contiguous();
  auto lc = lengths.contiguous();
  auto out = torch::empty({B, H, D}, q.options());
  attend_into(qc.data_ptr<float>(), H * D, B, H, kpool, vpool, index.data_ptr<int64_t>(), index.size(1),
              lc.data_ptr<int64_t>(), static_cast<float>(scale), window, out.data_ptr<float>());
  return out;
}

// -- fused elementwise steps of a layer -----------------------------------------------------------

// n floats into a pool of float32, bfloat16 or float16 from element `offset` (rounded to nearest
// even)
void store_row(torch::Tensor& pool, int64_t offset, const float* src, int64_t n) {
  switch (pool.scalar_type()) {
    case torch::kFloat32:
      std::memcpy(pool.data_ptr<float>() + offset, src, n * sizeof(float));
      break;
    case torch::kBFloat16: {
      at::BFloat16* dst = pool.data_ptr<at::BFloat16>() + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = at::BFloat16(src[i]);
      break;
    }
    case torch::kHalf: {
      at::Half* dst = pool.data_ptr<at::Half>() + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = at::Half(src[i]);
      break;
    }
    default:
      TORCH_CHECK(false, "the KV pools must be float32, bfloat16 or float16");
  }
}

// RoPE in the "rotate half" layout on the q and k parts of fused q/k/v rows (N, (H + 2 Hkv) D), in
// place, then k and v stored into the paged cache at each row's slot; cos/sin (N, D).
void rope_store_rows(float* x, int64_t N, int64_t H, int64_t Hkv, int64_t D, const float* c,
                     const float* s, torch::Tensor& kpool, torch::Tensor& vpool,
                     const int64_t* slot) {
  const int64_t width = (H + 2 * Hkv) * D, half = D / 2;
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* row = x + n * width;
      const float* cn = c + n * D;
      const float* sn = s + n * D;
      for (int64_t h = 0; h < H + Hkv; ++h) {  // q heads, then k heads
        float* v = row + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cn[i] - b * sn[i];
          v[i + half] = b * cn[i + half] + a * sn[i + half];
        }
      }
      store_row(kpool, slot[n] * Hkv * D, row + H * D, Hkv * D);
      store_row(vpool, slot[n] * Hkv * D, row + (H + Hkv) * D, Hkv * D);
    }
  });
}

// The same from tensors: one call for what were ~16 small operators.
// qkv (N, (H + 2 Hkv) D) float32; cos/sin (N, D); pools (slots, Hkv, D); slots (N,).
void rope_store(torch::Tensor qkv, int64_t H, int64_t Hkv, torch::Tensor cos, torch::Tensor sin,
                torch::Tensor kpool, torch::Tensor vpool, torch::Tensor slots) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && qkv.scalar_type() == torch::kFloat32,
              "qkv must be a contiguous float32 (N, width) tensor");
  check_pools(kpool, vpool);
  const int64_t N = qkv.size(0), D = kpool.size(2);
  TORCH_CHECK(qkv.size(1) == (H + 2 * Hkv) * D && kpool.size(1) == Hkv && D % 2 == 0,
              "qkv/pool shapes");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == N * D &&
                  sin.numel() == N * D && cos.scalar_type() == torch::kFloat32 &&
                  sin.scalar_type() == torch::kFloat32,
              "cos/sin: contiguous float32 (N, D)");
  TORCH_CHECK(slots.scalar_type() == torch::kLong && slots.numel() == N, "slots: int64 (N,)");
  auto sl = slots.contiguous();
  rope_store_rows(qkv.data_ptr<float>(), N, H, Hkv, D, cos.data_ptr<float>(),
                  sin.data_ptr<float>(), kpool, vpool, sl.data_ptr<int64_t>());
}

inline float silu_mul_one(float g, float u) { return g / (1.f + std::exp(-g)) * u; }

// silu(g) * u over n floats, W at a time, for both instruction sets (see ATTEND_BODY)
#define SILU_BODY(W, V, Load, Store, Set1, Sub, Add, Mul, Div, Exp)       \
  int64_t i = 0;                                                          \
  for (; i + W <= n; i += W) {                                            \
    const V x = Load(g + i);                                              \
    const V silu = Div(x, Add(Set1(1.f), Exp(Sub(Set1(0.f), x))));        \
    Store(o + i, Mul(silu, Load(u + i)));                                 \
  }                                                                       \
  for (; i < n; ++i) o[i] = silu_mul_one(g[i], u[i]);

AVX512 void silu_mul_avx512(const float* g, const float* u, float* o, int64_t n) {
  SILU_BODY(16, __m512, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_sub_ps,
            _mm512_add_ps, _mm512_mul_ps, _mm512_div_ps, exp512)
}

AVX2 void silu_mul_avx2(const float* g, const float* u, float* o, int64_t n) {
  SILU_BODY(8, __m256, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_sub_ps,
            _mm256_add_ps, _mm256_mul_ps, _mm256_div_ps, exp256)
}

// gate_up (N, 2F) -> out (N, F) = silu(gate) * up, float32
void silu_mul_rows(const float* x, int64_t N, int64_t F, float* o) {
  const Isa isa = chosen;
  at::parallel_for(0, N, std::max<int64_t>(1, 4096 / F), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* g = x + n * 2 * F;
      if (isa == Isa::avx512) silu_mul_avx512(g, g + F, o + n * F, F);
      else if (isa == Isa::avx2) silu_mul_avx2(g, g + F, o + n * F, F);
      else
        for (int64_t i = 0; i < F; ++i) o[n * F + i] = silu_mul_one(g[i], g[F + i]);
    }
  });
}

torch::Tensor silu_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() &&
                  gate_up.scalar_type() == torch::kFloat32 && gate_up.size(1) % 2 == 0,
              "gate_up must be a contiguous float32 (N, 2F) tensor");
  const int64_t N = gate_up.size(0), F = gate_up.size(1) / 2;
  auto out = torch::empty({N, F}, gate_up.options());
  silu_mul_rows(gate_up.data_ptr<float>(), N, F, out.data_ptr<float>());
  return out;
}

// -- dequantization, for prompt-sized matmuls -----------------------------------------------------

inline uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// One weight row as floats, 8 at a time: the portable loop's very operations (s * q, or s * q + m
// without an FMA), so the same bits; then to bf16 (round to nearest even) if asked. AVX2 with F16C
// (every AVX-512 CPU has them too).
AVX2 inline void store8(__m256 v, float* f, uint16_t* b) {
  if (!b) return _mm256_storeu_ps(f, v);
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(
      _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(b), packed);
}

AVX2 void dequantize_row_avx2(const QLinear& L, int64_t n, float* f, uint16_t* b) {
  const int64_t K = L.K, G = K / QK;
  const int fmt = L.fmt;
  const at::Half* sc = L.scales.data_ptr<at::Half>();
  const at::Half* mn = fmt == kQ4 ? L.extra.data_ptr<at::Half>() : nullptr;
  const uint32_t* qh_row =
      fmt == kQ5P ? reinterpret_cast<const uint32_t*>(L.extra.data_ptr<int32_t>()) + n * G : nullptr;
  const uint8_t* row4 = static_cast<const uint8_t*>(L.qw.data_ptr()) + n * K / 2;
  alignas(32) uint8_t q[QK];
  for (int64_t g = 0; g < G; ++g) {
    const __m256 s = _mm256_set1_ps(_cvtsh_ss(sc[n * G + g].x));
    const __m256 m = fmt == kQ4 ? _mm256_set1_ps(_cvtsh_ss(mn[n * G + g].x)) : _mm256_setzero_ps();
    const uint8_t* src;
    if (fmt == kQ4 || fmt == kQ5P) {
      const __m256i v = fmt == kQ4 ? nibble_block<kQ4>(row4, qh_row, g)
                                   : nibble_block<kQ5P>(row4, qh_row, g);
      _mm256_store_si256(reinterpret_cast<__m256i*>(q), v);
      src = q;
    } else {
      src = static_cast<const uint8_t*>(L.qw.data_ptr()) + n * K + g * QK;
    }
    for (int i = 0; i < QK; i += 8) {
      const __m128i eight = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i));
      __m256i qi;
      if (fmt == kQ8) qi = _mm256_cvtepi8_epi32(eight);
      else if (fmt == kQ4) qi = _mm256_cvtepu8_epi32(eight);
      else qi = _mm256_sub_epi32(_mm256_cvtepu8_epi32(eight), _mm256_set1_epi32(Q5_OFFSET));
      __m256 v = _mm256_mul_ps(s, _mm256_cvtepi32_ps(qi));
      if (fmt == kQ4) v = _mm256_add_ps(v, m);
      const int64_t at = g * QK + i;
      store8(v, f ? f + at : nullptr, b ? b + at : nullptr);
    }
  }
}

// A q8 (extra None), q4 (extra: mins) or q5 (extra: fifth bits) weight -> (N, K) float32 or bfloat16
torch::Tensor dequantize(torch::Tensor qw, torch::Tensor scales, c10::optional<torch::Tensor> extra,
                         bool bf16) {
  const QLinear L = make_linear(qw, scales, extra);
  const int64_t N = L.N, K = L.K, G = K / QK;
  auto out = torch::empty({N, K}, qw.options().dtype(bf16 ? torch::kBFloat16 : torch::kFloat32));
  void* base = out.data_ptr();
  if (chosen != Isa::portable) {
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        float* f = bf16 ? nullptr : static_cast<float*>(base) + n * K;
        uint16_t* b = bf16 ? static_cast<uint16_t*>(base) + n * K : nullptr;
        dequantize_row_avx2(L, n, f, b);
      }
    });
    return out;
  }
  const at::Half* sc = L.scales.data_ptr<at::Half>();
  const at::Half* mn = L.fmt == kQ4 ? L.extra.data_ptr<at::Half>() : nullptr;
  const uint32_t* qh =
      L.fmt == kQ5P ? reinterpret_cast<const uint32_t*>(L.extra.data_ptr<int32_t>()) : nullptr;
  const void* w = L.qw.data_ptr();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(K);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        const float s = half(sc, n * G + g);
        float* r = row.data() + g * QK;
        for (int j = 0; j < QK; ++j) {
          switch (L.fmt) {
            case kQ4: r[j] = s * value_of<kQ4>(w, qh, n, K, g, j) + half(mn, n * G + g); break;
            case kQ5P: r[j] = s * (value_of<kQ5P>(w, qh, n, K, g, j) - Q5_OFFSET); break;
            case kQ5: r[j] = s * (value_of<kQ5>(w, qh, n, K, g, j) - Q5_OFFSET); break;
            default: r[j] = s * value_of<kQ8>(w, qh, n, K, g, j);
          }
        }
      }
      if (bf16) {
        uint16_t* o = static_cast<uint16_t*>(base) + n * K;
        for (int64_t k = 0; k < K; ++k) o[k] = to_bf16(row[k]);
      } else {
        std::memcpy(static_cast<float*>(base) + n * K, row.data(), K * sizeof(float));
      }
    }
  });
  return out;
}

// Blocks b0..b1 of fake_quantize, 8 floats at a time: the same products and the same rounding (to
// nearest, ties to even) as the portable loop, so the same bits; without SSE4.1 in the baseline
// target, std::nearbyint there is a libm call per float.
AVX2 void fake_quantize_avx2(const float* xp, float* op, int64_t b0, int64_t b1) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* xs = xp + b * QK;
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < QK; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xs + j)));
    float d, inv;
    scale_of(hmax256(m), d, inv);
    const __m256 vd = _mm256_set1_ps(d), vinv = _mm256_set1_ps(inv);
    for (int j = 0; j < QK; j += 8) {
      const __m256 q = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xs + j), vinv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_ps(op + b * QK + j, _mm256_mul_ps(q, vd));
    }
  }
}

// x (M, K) float32 -> x rounded to the int8 grid of its blocks (q * scale, `quantize`'s q and scale)
// as floats: what the float matmul of a long prompt chunk multiplies, so that it and the integer
// kernels see the same x. One pass where PyTorch's operators took six.
torch::Tensor fake_quantize(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous() &&
                  x.size(1) % QK == 0,
              "x must be contiguous float32 (M, K), K a multiple of 32");
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, x.numel() / QK, 256, [&](int64_t b0, int64_t b1) {
    if (chosen != Isa::portable) return fake_quantize_avx2(xp, op, b0, b1);
    for (int64_t b = b0; b < b1; ++b) {
      const float* xs = xp + b * QK;
      float d, inv;
      block_scale(xs, d, inv);
      for (int j = 0; j < QK; ++j) op[b * QK + j] = std::nearbyint(xs[j] * inv) * d;
    }
  });
  return out;
}

// -- a whole decode step ---------------------------------------------------------------------------
//
// Every layer of a llama/qwen2-style model for M rows that each decode one token: norm, q/k/v, RoPE and
// the cache writes, paged attention, output projection, residual, norm, gate/up, silu, down, residual,
// in one call. The same kernels as the layer-by-layer path, without ~25 Python-level operators per
// layer around them (on a 135M model those took more time than the matmuls themselves).

// y = x / sqrt(mean(x^2) + eps) * w, row by row (C values each). The squares are summed in 8
// interleaved partial sums (the compiler vectorizes them), the same order on every CPU.
void rms_norm_rows(const float* x, int64_t M, int64_t C, const float* w, float eps, float* y) {
  at::parallel_for(0, M, 32, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xm = x + m * C;
      float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      int64_t c = 0;
      for (; c + 8 <= C; c += 8)
        for (int j = 0; j < 8; ++j) part[j] += xm[c + j] * xm[c + j];
      float ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      for (; c < C; ++c) ss += xm[c] * xm[c];
      const float r = 1.f / std::sqrt(ss / static_cast<float>(C) + eps);
      for (c = 0; c < C; ++c) y[m * C + c] = xm[c] * r * w[c];
    }
  });
}

// x (M, C) float32 -> RMS-normalized, times w (C,): the layer-by-layer path's norm, so that it and
// DecodeStep give the same bits
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kFloat32 &&
                  w.is_contiguous() && x.size(-1) == w.numel(),
              "rms_norm: float32 x (..., C) and w (C,)");
  auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t C = w.numel();
  rms_norm_rows(xc.data_ptr<float>(), xc.numel() / C, C, w.data_ptr<float>(),
                static_cast<float>(eps), y.data_ptr<float>());
  return y;
}

using LinearParts = std::vector<c10::optional<torch::Tensor>>;  // qweight, scales, mins, bias

class DecodeStep {
 public:
  DecodeStep(int64_t dim, int64_t H, int64_t Hkv, int64_t D, double eps, double scale)
      : dim_(dim), H_(H), Hkv_(Hkv), D_(D), eps_(static_cast<float>(eps)),
        scale_(static_cast<float>(scale)) {
    TORCH_CHECK(H % Hkv == 0 && D % 2 == 0, "heads do not match");
  }

  // One layer's weights (float32 norms; q4, q5 or q8 linears given as [qweight, scales, q4's mins
  // or q5's fifth bits or None, bias or None]); window: its sliding window (0: none).
  void add_layer(torch::Tensor attn_norm, LinearParts qkv, LinearParts o, torch::Tensor mlp_norm,
                 LinearParts gate_up, LinearParts down, int64_t window) {
    Layer l{norm(attn_norm), norm(mlp_norm), linear(qkv), linear(o), linear(gate_up),
            linear(down), window};
    const int64_t width = (H_ + 2 * Hkv_) * D_;
    TORCH_CHECK(l.qkv.K == dim_ && l.qkv.N == width, "q/k/v projection: ", dim_, " -> ", width);
    TORCH_CHECK(l.o.K == H_ * D_ && l.o.N == dim_, "output projection: ", H_ * D_, " -> ", dim_);
    TORCH_CHECK(l.gate_up.K == dim_ && l.gate_up.N % 2 == 0, "gate/up projection: ", dim_, " -> 2F");
    TORCH_CHECK(l.down.K == l.gate_up.N / 2 && l.down.N == dim_, "down projection: F -> ", dim_);
    layers_.push_back(std::move(l));
  }

  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }

  // x (M, dim) float32: one row per sequence; cos/sin (M, D) at each row's position; slots (M,)
  // where each row's key/value goes; index (M, W) slot of every position of each sequence; lengths
  // (M,); the pools of every layer. -> x after the last layer (before the final norm).
  torch::Tensor run(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, torch::Tensor slots,
                    torch::Tensor index, torch::Tensor lengths, std::vector<torch::Tensor> kpools,
                    std::vector<torch::Tensor> vpools) {
    TORCH_CHECK(x.dim() == 2 && x.size(1) == dim_ && x.scalar_type() == torch::kFloat32,
                "x must be float32 (M, ", dim_, ")");
    const int64_t M = x.size(0);
    TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 &&
                    cos.is_contiguous() && sin.is_contiguous() && cos.numel() == M * D_ &&
                    sin.numel() == M * D_,
                "cos/sin: contiguous float32 (M, D)");
    TORCH_CHECK(slots.scalar_type() == torch::kLong && slots.is_contiguous() && slots.numel() == M,
                "slots: int64 (M,)");
    TORCH_CHECK(index.scalar_type() == torch::kLong && index.is_contiguous() && index.dim() == 2 &&
                    index.size(0) == M,
                "index: int64 (M, W)");
    TORCH_CHECK(lengths.scalar_type() == torch::kLong && lengths.is_contiguous() &&
                    lengths.numel() == M,
                "lengths: int64 (M,)");
    TORCH_CHECK(static_cast<int64_t>(kpools.size()) == n_layers() &&
                    static_cast<int64_t>(vpools.size()) == n_layers(),
                "one key and one value pool per layer");
    auto out = x.contiguous().clone();
    float* xs = out.data_ptr<float>();
    const int64_t width = (H_ + 2 * Hkv_) * D_;
    int64_t F = 0;
    for (const auto& l : layers_) F = std::max(F, l.down.K);
    std::vector<float> h(M * dim_), qkv(M * width), att(M * H_ * D_), tmp(M * dim_),
        gu(M * 2 * F), act(M * F);
    const float* c = cos.data_ptr<float>();
    const float* s = sin.data_ptr<float>();
    const int64_t* sl = slots.data_ptr<int64_t>();
    const int64_t* ix = index.data_ptr<int64_t>();
    const int64_t* ln = lengths.data_ptr<int64_t>();
    for (int64_t i = 0; i < n_layers(); ++i) {
      const Layer& l = layers_[i];
      check_pools(kpools[i], vpools[i]);
      TORCH_CHECK(kpools[i].size(1) == Hkv_ && kpools[i].size(2) == D_, "pool shape");
      rms_norm_rows(xs, M, dim_, l.attn_norm.data_ptr<float>(), eps_, h.data());
      matmul_into(h.data(), M, l.qkv, qkv.data());
      rope_store_rows(qkv.data(), M, H_, Hkv_, D_, c, s, kpools[i], vpools[i], sl);
      attend_into(qkv.data(), width, M, H_, kpools[i], vpools[i], ix, index.size(1), ln, scale_,
                  l.window, att.data());
      matmul_into(att.data(), M, l.o, tmp.data());
      for (int64_t j = 0; j < M * dim_; ++j) xs[j] += tmp[j];
      rms_norm_rows(xs, M, dim_, l.mlp_norm.data_ptr<float>(), eps_, h.data());
      const int64_t f = l.down.K;
      matmul_into(h.data(), M, l.gate_up, gu.data());
      silu_mul_rows(gu.data(), M, f, act.data());
      matmul_into(act.data(), M, l.down, tmp.data());
      for (int64_t j = 0; j < M * dim_; ++j) xs[j] += tmp[j];
    }
    return out;
  }

 private:
  struct Layer {
    torch::Tensor attn_norm, mlp_norm;
    QLinear qkv, o, gate_up, down;
    int64_t window;
  };

  torch::Tensor norm(const torch::Tensor& w) const {
    TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.is_contiguous() && w.numel() == dim_,
                "norm weights: float32 (", dim_, ",)");
    return w;
  }

  static QLinear linear(const LinearParts& p) {
    TORCH_CHECK(p.size() == 4 && p[0].has_value() && p[1].has_value(),
                "a linear layer is [qweight, scales, mins or fifth bits or None, bias or None]");
    QLinear l = make_linear(*p[0], *p[1], p[2]);
    if (p[3].has_value()) {
      TORCH_CHECK(p[3]->scalar_type() == torch::kFloat32 && p[3]->is_contiguous() &&
                      p[3]->numel() == l.N,
                  "bias: float32 (N,)");
      l.bias = *p[3];
    }
    return l;
  }

  int64_t dim_, H_, Hkv_, D_;
  float eps_, scale_;
  std::vector<Layer> layers_;
};

}  // namespace

namespace genforge_attention {  // attention.cpp
std::vector<torch::Tensor> flash_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                         double scale);
std::vector<torch::Tensor> flash_backward(torch::Tensor grad, torch::Tensor q, torch::Tensor k,
                                          torch::Tensor v, torch::Tensor out, torch::Tensor lse,
                                          double scale);
bool supported();
}  // namespace genforge_attention

namespace genforge_loss {  // loss.cpp
torch::Tensor softmax_xent_(torch::Tensor logits, torch::Tensor targets, double scale);
}  // namespace genforge_loss

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("q4_matmul", &q4_matmul, "x (M, K) float32 @ q4 weight (N, K) -> (M, N) float32");
  m.def("q8_matmul", &q8_matmul, "x (M, K) float32 @ q8 weight (N, K) -> (M, N) float32");
  m.def("q5_matmul", &q5_matmul, "x (M, K) float32 @ q5 weight (N, K) -> (M, N) float32");
  m.def("decode_attention", &decode_attention,
        "one query per sequence over its keys/values in the paged cache -> (B, H, D)");
  m.def("rope_store", &rope_store,
        "RoPE on q and k of a fused q/k/v (N, width) in place, k and v into the paged cache");
  m.def("silu_mul", &silu_mul, "gate_up (N, 2F) -> silu(gate) * up (N, F)");
  m.def("dequantize", &dequantize,
        "q8 (extra None), q4 (extra: mins) or q5 (extra: fifth bits) weight -> (N, K) float32 or "
        "bfloat16",
        py::arg("qweight"), py::arg("scales"), py::arg("extra"), py::arg("bf16"));
  py::class_<DecodeStep>(m, "DecodeStep")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, double, double>(), py::arg("dim"),
           py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("eps"),
           py::arg("scale"))
      .def("add_layer", &DecodeStep::add_layer)
      // without the GIL: the threads that stream the tokens out run meanwhile
      .def("run", &DecodeStep::run, "every layer for rows that decode one token each",
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("n_layers", &DecodeStep::n_layers);
  m.def("fake_quantize", &fake_quantize, "x (M, K) float32 rounded to its int8 blocks, as floats");
  m.def("rms_norm", &rms_norm, "x (..., C) float32 normalized by its RMS, times w (C,)");
  m.def("flash_forward", &genforge_attention::flash_forward,
        "causal attention of bf16 q (S, W, H, D) on k, v (S, W, Hkv, D), one sequence a row -> "
        "out (S, W, H, D), the log-sum-exp of each query's scores (S, H, W) float64",
        py::call_guard<py::gil_scoped_release>());
  m.def("flash_backward", &genforge_attention::flash_backward,
        "flash_forward's gradients: (grad, q, k, v, out, lse, scale) -> dq, dk, dv",
        py::call_guard<py::gil_scoped_release>());
  m.def("softmax_xent_", &genforge_loss::softmax_xent_,
        "bf16 logits (N, V) in place -> (softmax - one-hot(targets)) * scale; returns each row's "
        "log-sum-exp minus its target's logit (float32; a target < 0: 0 and a zero row)",
        py::call_guard<py::gil_scoped_release>());
  m.def("flash_supported", &genforge_attention::supported,
        "whether this CPU runs flash_forward / flash_backward (AVX512-BF16)");
  m.def("isa", &isa_name, "the instruction set the kernels use on this CPU");
  m.attr("Q4_LANE_ROWS") = Q4_LANE_ROWS;  // from there on AVX2 takes q4 8 weight rows at a time
  m.def("set_isa", &set_isa, "use another path (avx512-vnni, avx2, portable) if the CPU can");
}
