// Cross-entropy's softmax on a block of bf16 logits, in place, for a frozen output head
// (genforge/model/loss.py): each row (V logits) becomes its gradient (softmax - one-hot) * scale in
// bf16, and its loss term (log-sum-exp - the target's logit) comes back in float32. One read of the
// row for its max, one pass that keeps exp(x - max) in a float32 row of scratch (a row is 96 KB of
// bf16 at a 49k vocabulary: the passes after the first are served by the core's cache) and sums
// it, one that scales it into the row: where PyTorch's passes made a float32 copy of the block
// and went over it five times. AVX-512 with AVX512-BF16 (its rounding to bf16).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace genforge_loss {

constexpr int64_t L = 16;

BF16 inline __m512 load_bf16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

BF16 inline __m512 load_bf16_tail(const uint16_t* p, __mmask16 k) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

BF16 float row(uint16_t* x, int64_t V, int64_t target, float scale, float* e) {
  if (target < 0) {  // an ignored row: no loss, no gradient
    std::memset(x, 0, V * 2);
    return 0.f;
  }
  const float picked = bf16_bits_to_float(x[target]);
  const int64_t full = V / L * L;
  const __mmask16 tail = static_cast<__mmask16>((1u << (V - full)) - 1);
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < full; j += L) mx = _mm512_max_ps(mx, load_bf16(x + j));
  if (tail) mx = _mm512_mask_max_ps(mx, tail, mx, load_bf16_tail(x + full, tail));
  const float m = _mm512_reduce_max_ps(mx);
  const __m512 vm = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < full; j += L) {
    const __m512 v = exp512(_mm512_sub_ps(load_bf16(x + j), vm));
    _mm512_storeu_ps(e + j, v);
    sum = _mm512_add_ps(sum, v);
  }
  if (tail) {
    const __m512 v = _mm512_maskz_mov_ps(tail, exp512(_mm512_sub_ps(load_bf16_tail(x + full, tail), vm)));
    _mm512_mask_storeu_ps(e + full, tail, v);
    sum = _mm512_add_ps(sum, v);
  }
  const float total = _mm512_reduce_add_ps(sum);
  const __m512 f = _mm512_set1_ps(scale / total);
  e[target] -= total;  // softmax - one-hot, before the scale: (e - total) * scale / total
  for (int64_t j = 0; j < full; j += L)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x + j),
                        to_bf16(_mm512_mul_ps(_mm512_loadu_ps(e + j), f)));
  if (tail)
    _mm256_mask_storeu_epi16(x + full, tail,
                             to_bf16(_mm512_mul_ps(
                                 _mm512_maskz_loadu_ps(tail, e + full), f)));
  return m + std::log(total) - picked;
}

torch::Tensor softmax_xent_(torch::Tensor logits, torch::Tensor targets, double scale) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kBFloat16 && logits.is_contiguous(),
              "logits: contiguous bfloat16 (N, V)");
  const int64_t N = logits.size(0), V = logits.size(1);
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == N && targets.scalar_type() == at::kLong,
              "targets: int64 (N,)");
  targets = targets.contiguous();
  auto loss = torch::empty({N}, logits.options().dtype(at::kFloat));
  uint16_t* x = reinterpret_cast<uint16_t*>(logits.data_ptr<at::BFloat16>());
  const int64_t* t = targets.data_ptr<int64_t>();
  float* out = loss.data_ptr<float>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK(t[i] < V, "target ", t[i], " outside the vocabulary of ", V);
  at::parallel_for(0, N, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> e(V);
    for (int64_t r = r0; r < r1; ++r)
      out[r] = row(x + r * V, V, t[r], static_cast<float>(scale), e.data());
  });
  return loss;
}

}  // namespace genforge_loss
