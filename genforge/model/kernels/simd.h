// What genforge's kernel files share: the target attributes of each instruction set's code, and
// exp on their vectors.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
// for the small helpers of the inner loops: a call there spills their vectors to memory
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
// AVX-512 with AVX512-BF16: the training kernels (attention.cpp, loss.cpp)
#define BF16_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c"
#define BF16 __attribute__((target(BF16_TARGET)))
#define BF16_INLINE __attribute__((target(BF16_TARGET), always_inline)) inline

// exp(x) for -87 <= x <= 88 (clamped there): 2^(x log2 e) = 2^n * 2^f, f in [-1/2, 1/2], 2^f by
// its Taylor series to the 6th power (relative error below 2e-7, about a float32 rounding step).
// exp512 and exp256 share the polynomial; they differ in how 2^n is applied (AVX-512's scalef,
// AVX2's exponent bits), which is why their bodies look alike.
#define EXP_POLY(FMA, SET1, p, f)                                      \
  p = SET1(1.5403530393381606e-4f);                                 \
  p = FMA(p, f, SET1(1.3333558146428443e-3f));                      \
  p = FMA(p, f, SET1(9.6181291076284772e-3f));                      \
  p = FMA(p, f, SET1(5.5504108664821580e-2f));                      \
  p = FMA(p, f, SET1(2.4022650695910071e-1f));                      \
  p = FMA(p, f, SET1(6.9314718055994531e-1f));                      \
  p = FMA(p, f, SET1(1.0f));

AVX512 inline __m512 exp512(__m512 x) {
  const __m512 t = _mm512_mul_ps(
      _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f)),
      _mm512_set1_ps(1.44269504f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p;
  EXP_POLY(_mm512_fmadd_ps, _mm512_set1_ps, p, f)
  return _mm512_scalef_ps(p, n);
}

AVX2 inline __m256 exp256(__m256 x) {
  const __m256 t = _mm256_mul_ps(
      _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f)),
      _mm256_set1_ps(1.44269504f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 p;
  EXP_POLY(_mm256_fmadd_ps, _mm256_set1_ps, p, f)
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}


// A bf16 value (its bits) as a float: the high half of a float32.
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// 16 floats rounded to bf16 (nearest, ties to even), as their bits.
BF16_INLINE __m256i to_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }
