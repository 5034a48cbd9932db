// One decoding step of one sequence through every decoder layer, in compiled code.
//
// Why: at batch 1 a small model's token is ~25 ATen ops per layer, and on a 135M model a third of the time went to
// Python between them (benchmarks/README.md, "Kernel paths per CPU"), which llama.cpp does not pay. This runs the
// same sub-layers as engine/forward.py's `decode_one` for Llama-shaped layers (RMSNorm, fused q/k/v with optional
// bias, full rotary, grouped-query attention over the call's own cache, output projection, SiLU-gated MLP), skipping
// what the plan skips and filling the keys and values of skipped attention layers that have cache buffers, with the
// same int8/int4 GEMV kernels and activation rounding (so every projection is bit-for-bit the Python path's; norms,
// attention and the activation differ only in float summation order). Families with anything else (per-head norms,
// output norms, soft-capping, sliding windows, partial rotary) keep the Python path: engine/fused_decode.py decides.
//
// Included by cpu_gemv.cpp after its helpers (`quantize_x`, `half_bits`).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <memory>
#include <vector>

#include "gemv_dispatch.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace ls_decode {

// dot(a, b) over n floats and y += s * x: the attention's inner loops (the only float work that grows with context).
inline float dot_ref(const float* a, const float* b, int64_t n) {
  float acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += a[i + j] * b[i + j];
  float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy_ref(float* y, float s, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += s * x[i];
}

#if defined(__x86_64__) || defined(_M_X64)
LS_AVX2_TARGET inline float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  const __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  float out = _mm_cvtss_f32(s);
  for (; i < n; ++i) out += a[i] * b[i];
  return out;
}

LS_AVX2_TARGET inline void axpy_avx2(float* y, float s, const float* x, int64_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(sv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += s * x[i];
}
#endif

inline bool use_avx2(ls::Isa isa) { return isa == ls::Isa::Avx2 || isa == ls::Isa::Avx512Vnni; }

inline float dot(ls::Isa isa, const float* a, const float* b, int64_t n) {
#if defined(__x86_64__) || defined(_M_X64)
  if (use_avx2(isa)) return dot_avx2(a, b, n);
#endif
  return dot_ref(a, b, n);
}

inline void axpy(ls::Isa isa, float* y, float s, const float* x, int64_t n) {
#if defined(__x86_64__) || defined(_M_X64)
  if (use_avx2(isa)) return axpy_avx2(y, s, x, n);
#endif
  axpy_ref(y, s, x, n);
}

// One int8 or int4 blocked projection (formats.Int8Linear / Int4Linear buffers), with its optional float32 bias.
struct Linear {
  int64_t bits;
  torch::Tensor w, params, bias;
  int64_t n, n16, k, k_in;  // out features, rows padded to 16, inputs padded to 32, real inputs
};

// y[0, n) = W x (+ bias) for one row x of k_in floats; `xpad` is scratch of at least k floats.
inline void gemv(ls::Isa isa, const Linear& lin, const float* x, float* xpad, float* y) {
  std::copy(x, x + lin.k_in, xpad);
  std::fill(xpad + lin.k_in, xpad + lin.k, 0.0f);
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> sx, xsum;
  thread_local std::vector<int32_t> xqsum;
  const int64_t groups = lin.k / ls::kXGroup;
  xq.resize(static_cast<size_t>(lin.k));
  sx.resize(static_cast<size_t>(groups));
  xsum.resize(static_cast<size_t>(groups));
  xqsum.resize(static_cast<size_t>(groups));
  ls::quantize_x_rows(isa, xpad, 1, lin.k, xq.data(), sx.data(), xqsum.data(), xsum.data());
  const ls::XQuant q{xq.data(), sx.data(), xqsum.data(), xsum.data()};
  const uint8_t* wp = lin.w.data_ptr<uint8_t>();
  const uint16_t* pp = reinterpret_cast<const uint16_t*>(lin.params.data_ptr<at::Half>());
  const int64_t nblocks = lin.n16 / 16;
  // The grains of int8_blocked_gemv / int4_blocked_gemv: the same split over threads.
  if (lin.bits == 8) {
    at::parallel_for(0, nblocks, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, lin.k / 16)),
                     [&](int64_t b0, int64_t b1) { ls::i8b_blocks(isa, wp, pp, lin.k, q, 1, y, lin.n16, b0, b1); });
  } else {
    at::parallel_for(0, nblocks, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, lin.k / 16)),
                     [&](int64_t b0, int64_t b1) { ls::i4b_blocks(isa, wp, pp, lin.k, q, 1, y, lin.n16, b0, b1); });
  }
  if (lin.bias.defined()) {
    const float* b = lin.bias.data_ptr<float>();
    for (int64_t i = 0; i < lin.n; ++i) y[i] += b[i];
  }
}

// HF's Llama/Qwen2 RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), in float32.
inline void rms_norm(const float* x, const float* weight, float eps, int64_t n, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * inv);
}

// Rotary on one head (rotate-half convention, cos/sin of the full head width).
inline void rotate(float* x, const float* cos, const float* sin, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

struct Layer {
  torch::Tensor attn_norm, mlp_norm;
  float attn_eps, mlp_eps;
  Linear qkv, o, gate_up, down;
};

// The model's layers, made once per loaded model (engine/fused_decode.py).
class Program {
 public:
  Program(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate, double scaling)
      : hidden_(hidden), heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), inter_(intermediate),
        scaling_(static_cast<float>(scaling)) {
    TORCH_CHECK(heads % kv_heads == 0 && head_dim % 2 == 0, "heads must be a multiple of kv_heads, head_dim even");
  }

  static Linear linear(int64_t bits, torch::Tensor w, torch::Tensor params, int64_t n, int64_t k_in,
                       c10::optional<torch::Tensor> bias) {
    TORCH_CHECK(bits == 8 || bits == 4, "bits must be 8 or 4");
    TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 4 && w.is_contiguous() &&
                    params.scalar_type() == torch::kFloat16 && params.is_contiguous(),
                "blocked weights must be contiguous uint8 codes and float16 parameters");
    TORCH_CHECK(w.size(2) == 16 && w.size(3) == 4, "blocked weights must be [n16 / 16, k / ", bits == 8 ? 4 : 8,
                ", 16, 4], got ", w.sizes());
    const int64_t k = w.size(1) * (bits == 8 ? 4 : 8), n16 = w.size(0) * 16;
    TORCH_CHECK(k % ls::kXGroup == 0, "the blocked inputs (", k, ") must be a multiple of ", ls::kXGroup);
    TORCH_CHECK(n <= n16 && n > n16 - 16 && k_in <= k && k_in > k - ls::kXGroup, "n and k_in do not match the layout");
    // int8: one scale per row and group [n16 / 16, k / 32, 16]; int4: (scale, min) [n16 / 16, k / 32, 2, 16].
    const std::vector<int64_t> want = bits == 8 ? std::vector<int64_t>{n16 / 16, k / ls::kXGroup, 16}
                                                : std::vector<int64_t>{n16 / 16, k / ls::kXGroup, 2, 16};
    TORCH_CHECK(params.sizes() == c10::IntArrayRef(want), "int", bits, " parameters must be ", c10::IntArrayRef(want),
                " for these weights, got ", params.sizes());
    Linear lin{bits, w, params, torch::Tensor(), n, n16, k, k_in};
    if (bias.has_value() && bias->defined()) {
      TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->numel() == n && bias->is_contiguous(),
                  "bias must be contiguous float32 [n]");
      lin.bias = *bias;
    }
    return lin;
  }

  void add_layer(torch::Tensor attn_norm, double attn_eps, int64_t qkv_bits, torch::Tensor qkv_w,
                 torch::Tensor qkv_p, c10::optional<torch::Tensor> qkv_bias, int64_t o_bits, torch::Tensor o_w,
                 torch::Tensor o_p, c10::optional<torch::Tensor> o_bias, torch::Tensor mlp_norm, double mlp_eps,
                 int64_t gu_bits, torch::Tensor gu_w, torch::Tensor gu_p, c10::optional<torch::Tensor> gu_bias,
                 int64_t down_bits, torch::Tensor down_w, torch::Tensor down_p, c10::optional<torch::Tensor> down_bias) {
    TORCH_CHECK(!sealed_, "add_layer after a DecodeSession was made on this program: a session binds one cache buffer "
                "per layer it saw, so the program's layers are fixed from then on");
    auto norm_ok = [&](const torch::Tensor& t) {
      return t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.numel() == hidden_;
    };
    TORCH_CHECK(norm_ok(attn_norm) && norm_ok(mlp_norm), "norm weights must be contiguous float32 [hidden]");
    const int64_t qkv_n = (heads_ + 2 * kv_heads_) * head_dim_;
    Layer layer{attn_norm, mlp_norm, static_cast<float>(attn_eps), static_cast<float>(mlp_eps),
                linear(qkv_bits, qkv_w, qkv_p, qkv_n, hidden_, qkv_bias),
                linear(o_bits, o_w, o_p, hidden_, heads_ * head_dim_, o_bias),
                linear(gu_bits, gu_w, gu_p, 2 * inter_, hidden_, gu_bias),
                linear(down_bits, down_w, down_p, hidden_, inter_, down_bias)};
    layers_.push_back(std::move(layer));
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // Called by the first Session: from then on the layers are fixed (see add_layer).
  void seal() { sealed_ = true; }

  const std::vector<Layer>& layers() const { return layers_; }
  int64_t hidden() const { return hidden_; }
  int64_t heads() const { return heads_; }
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t intermediate() const { return inter_; }
  float scaling() const { return scaling_; }

 private:
  int64_t hidden_, heads_, kv_heads_, head_dim_, inter_;
  float scaling_;
  std::vector<Layer> layers_;
  bool sealed_ = false;
};

// One call's plan and KV cache bound to a program: `step` runs one token. Made once per call (per cache), so the
// per-token cost is the step alone.
class Session {
 public:
  Session(std::shared_ptr<Program> program, std::vector<c10::optional<torch::Tensor>> keys,
          std::vector<c10::optional<torch::Tensor>> values, std::vector<bool> skip_attention,
          std::vector<bool> skip_mlp, std::vector<double> attention_scale, std::vector<double> mlp_scale)
      : program_(std::move(program)), skip_attn_(std::move(skip_attention)), skip_mlp_(std::move(skip_mlp)),
        attn_scale_(attention_scale.begin(), attention_scale.end()), mlp_scale_(mlp_scale.begin(), mlp_scale.end()) {
    TORCH_CHECK(program_ != nullptr && program_->num_layers() > 0, "the program has no layers");
    program_->seal();
    const int64_t layers = program_->num_layers();
    TORCH_CHECK(static_cast<int64_t>(keys.size()) == layers && static_cast<int64_t>(values.size()) == layers &&
                    static_cast<int64_t>(skip_attn_.size()) == layers && static_cast<int64_t>(skip_mlp_.size()) == layers &&
                    static_cast<int64_t>(attn_scale_.size()) == layers && static_cast<int64_t>(mlp_scale_.size()) == layers,
                "one entry per layer expected");
    for (int64_t l = 0; l < layers; ++l) {
      const bool has = keys[l].has_value() && keys[l]->defined();
      TORCH_CHECK(has == (values[l].has_value() && values[l]->defined()), "keys and values must come in pairs");
      TORCH_CHECK(has || skip_attn_[l], "layer ", l, " runs attention but has no cache buffer");
      if (has) {
        const auto& k = *keys[l];
        TORCH_CHECK(k.scalar_type() == torch::kFloat32 && k.dim() == 4 && k.size(0) == 1 &&
                        k.size(1) == program_->kv_heads() && k.size(3) == program_->head_dim() && k.is_contiguous() &&
                        values[l]->sizes() == k.sizes() && values[l]->is_contiguous() &&
                        values[l]->scalar_type() == torch::kFloat32,
                    "cache buffers must be contiguous float32 [1, kv_heads, capacity, head_dim]");
        capacity_ = k.size(2);
        has_cache_ = true;
        keys_.push_back(k);
        values_.push_back(*values[l]);
      } else {
        keys_.emplace_back();
        values_.emplace_back();
      }
    }
    const int64_t width = std::max({program_->hidden(), program_->heads() * program_->head_dim(),
                                    program_->intermediate()}) + ls::kXGroup;
    normed_.resize(static_cast<size_t>(width));
    xpad_.resize(static_cast<size_t>(width));
    attn_.resize(static_cast<size_t>(width));
    qkv_.resize(static_cast<size_t>((program_->heads() + 2 * program_->kv_heads()) * program_->head_dim() + 16));
    out_.resize(static_cast<size_t>(program_->hidden() + 16));
    gate_up_.resize(static_cast<size_t>(2 * program_->intermediate() + 16));
    act_.resize(static_cast<size_t>(program_->intermediate()));
  }

  // hidden [hidden] float32, updated in place; cos/sin [head_dim] at the token's position; `column`: the cache
  // column the token's keys and values go to (attention reads columns 0..column).
  void step(torch::Tensor hidden, torch::Tensor cos, torch::Tensor sin, int64_t column) {
    const Program& p = *program_;
    TORCH_CHECK(hidden.scalar_type() == torch::kFloat32 && hidden.is_contiguous() && hidden.numel() == p.hidden(),
                "hidden must be contiguous float32 [hidden]");
    TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 && cos.is_contiguous() &&
                    sin.is_contiguous() && cos.numel() == p.head_dim() && sin.numel() == p.head_dim(),
                "cos and sin must be contiguous float32 [head_dim]");
    TORCH_CHECK(column >= 0 && (column < capacity_ || !has_cache_), "KV cache overflow: column ", column, " of ",
                capacity_);
    const ls::Isa isa = ls::active_isa();
    float* h = hidden.data_ptr<float>();
    const float* c = cos.data_ptr<float>();
    const float* s = sin.data_ptr<float>();
    const int64_t d = p.head_dim(), heads = p.heads(), kvh = p.kv_heads(), n = p.hidden(), inter = p.intermediate();
    for (int64_t l = 0; l < p.num_layers(); ++l) {
      const Layer& layer = p.layers()[l];
      const bool has_cache = keys_[l].defined();
      if (!skip_attn_[l] || has_cache) {
        rms_norm(h, layer.attn_norm.data_ptr<float>(), layer.attn_eps, n, normed_.data());
        gemv(isa, layer.qkv, normed_.data(), xpad_.data(), qkv_.data());
        float* q = qkv_.data();
        float* k = q + heads * d;
        float* v = k + kvh * d;
        for (int64_t g = 0; g < kvh; ++g) rotate(k + g * d, c, s, d);
        float* kc = keys_[l].data_ptr<float>();
        float* vc = values_[l].data_ptr<float>();
        for (int64_t g = 0; g < kvh; ++g) {
          std::copy(k + g * d, k + (g + 1) * d, kc + (g * capacity_ + column) * d);
          std::copy(v + g * d, v + (g + 1) * d, vc + (g * capacity_ + column) * d);
        }
        if (!skip_attn_[l]) {
          for (int64_t hd = 0; hd < heads; ++hd) rotate(q + hd * d, c, s, d);
          attend(isa, q, kc, vc, column + 1);
          gemv(isa, layer.o, attn_.data(), xpad_.data(), out_.data());
          for (int64_t i = 0; i < n; ++i) h[i] += out_[i];
        }
      }
      if (skip_attn_[l] && attn_scale_[l] != 1.0f)
        for (int64_t i = 0; i < n; ++i) h[i] *= attn_scale_[l];
      if (!skip_mlp_[l]) {
        rms_norm(h, layer.mlp_norm.data_ptr<float>(), layer.mlp_eps, n, normed_.data());
        gemv(isa, layer.gate_up, normed_.data(), xpad_.data(), gate_up_.data());
        const float* gate = gate_up_.data();
        const float* up = gate + inter;
        for (int64_t i = 0; i < inter; ++i) act_[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
        gemv(isa, layer.down, act_.data(), xpad_.data(), out_.data());
        for (int64_t i = 0; i < n; ++i) h[i] += out_[i];
      } else if (mlp_scale_[l] != 1.0f) {
        for (int64_t i = 0; i < n; ++i) h[i] *= mlp_scale_[l];
      }
    }
  }

 private:
  // Softmax attention of every query head over columns [0, length) of its kv head's cache, into attn_.
  void attend(ls::Isa isa, const float* q, const float* kc, const float* vc, int64_t length) {
    const Program& p = *program_;
    const int64_t d = p.head_dim(), group = p.heads() / p.kv_heads();
    scores_.resize(static_cast<size_t>(length));
    for (int64_t hd = 0; hd < p.heads(); ++hd) {
      const int64_t g = hd / group;
      const float* kg = kc + g * capacity_ * d;
      const float* vg = vc + g * capacity_ * d;
      const float* qh = q + hd * d;
      float top = -INFINITY;
      for (int64_t t = 0; t < length; ++t) {
        scores_[t] = dot(isa, qh, kg + t * d, d) * p.scaling();
        top = std::max(top, scores_[t]);
      }
      float total = 0.0f;
      for (int64_t t = 0; t < length; ++t) total += (scores_[t] = std::exp(scores_[t] - top));
      float* out = attn_.data() + hd * d;
      std::fill(out, out + d, 0.0f);
      const float inv = 1.0f / total;
      for (int64_t t = 0; t < length; ++t) axpy(isa, out, scores_[t] * inv, vg + t * d, d);
    }
  }

  std::shared_ptr<Program> program_;
  std::vector<torch::Tensor> keys_, values_;
  std::vector<bool> skip_attn_, skip_mlp_;
  std::vector<float> attn_scale_, mlp_scale_;
  int64_t capacity_ = 0;
  bool has_cache_ = false;
  std::vector<float> normed_, xpad_, attn_, qkv_, out_, gate_up_, act_, scores_;
};

}  // namespace ls_decode
