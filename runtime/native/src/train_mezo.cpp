// The zeroth-order step rule (MeZO / SPSA): SGD on an inference-only program forward(x, y, *weights)
// -> (loss, pred). The weights live in the runner's buffers; each step perturbs them in place by
// +-eps*z and back, z drawn from a counter-based generator keyed by the step (never stored:
// regenerated for every pass), so memory is the inference's plus the weights. Which weights are
// inputs is the program's choice: every parameter (mezo) or only LoRA adapters (zo-lora, the base
// frozen in the program).
//
// z, element j of the trainable parameters taken in order as one vector (runtime/zo.py is the
// same rule in numpy and must stay in step with this file):
//   draw(key, i) = mix64(key + (i + 1) * golden)          (SplitMix64's i-th output from state key)
//   unit(b)      = (b >> 11) * 2^-53                        in [0, 1)
//   gaussian:   pair k = j / 2: u1 = 1 - unit(draw(key, 2k)), u2 = unit(draw(key, 2k + 1)),
//               r = sqrt(-2 ln u1); z = r cos(2 pi u2) for even j, r sin(2 pi u2) for odd j
//   rademacher: z = +1 or -1 by bit (j % 64) of draw(key, j / 64)   (no libm: exact everywhere)
// and a pass sets w = float(double(w) * (1 - decay) + scale * z), no fused multiply-add
// (-ffp-contract=off), so a step is the same bits on every platform libm agrees on.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>

#include "threadpool_api.h"
#include "train.h"

namespace edgerun {

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
inline uint64_t draw(uint64_t key, uint64_t i) { return mix64(key + (i + 1) * kGolden); }
inline double unit(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// The key of perturbation `sample` of optimizer step `step` (0-based) of a run seeded `seed`.
uint64_t step_key(uint64_t seed, int64_t step, int64_t sample) {
  return mix64(seed * 0xD1B54A32D192ED03ULL + static_cast<uint64_t>(step) * 0x10000ULL +
               static_cast<uint64_t>(sample) + 7);
}

enum class Noise { kGaussian, kRademacher };

// The trainable parameters as one vector of float32 segments.
struct Flat {
  std::vector<float*> ptr;
  std::vector<size_t> start;  // global index of each segment's first element
  size_t n = 0;
  void add(float* p, size_t len) {
    ptr.push_back(p);
    start.push_back(n);
    n += len;
  }
  size_t len(size_t s) const { return (s + 1 < start.size() ? start[s + 1] : n) - start[s]; }
};

// w[j] = w[j] * keep + scale * z[j] for j in [a, b) (a even); keep = 1 - decay.
void perturb_range(const Flat& f, uint64_t key, Noise noise, double scale, double keep, size_t a, size_t b) {
  size_t s = 0;
  while (s + 1 < f.start.size() && f.start[s + 1] <= a) ++s;
  auto at = [&](size_t j) -> float& {
    while (j >= f.start[s] + f.len(s)) ++s;
    return f.ptr[s][j - f.start[s]];
  };
  auto put = [&](size_t j, double z) {
    float& v = at(j);
    const double kept = static_cast<double>(v) * keep;
    const double step = scale * z;
    v = static_cast<float>(kept + step);
  };
  if (noise == Noise::kGaussian) {
    for (size_t j = a; j < b; j += 2) {
      const uint64_t k = j / 2;
      const double u1 = 1.0 - unit(draw(key, 2 * k)), u2 = unit(draw(key, 2 * k + 1));
      const double r = std::sqrt(-2.0 * std::log(u1));
      put(j, r * std::cos(2 * M_PI * u2));
      if (j + 1 < b) put(j + 1, r * std::sin(2 * M_PI * u2));
    }
  } else {
    uint64_t bits = 0;
    for (size_t j = a; j < b; ++j) {
      if (j == a || j % 64 == 0) bits = draw(key, j / 64);
      put(j, ((bits >> (j % 64)) & 1) ? 1.0 : -1.0);
    }
  }
}

// One pass over every trainable parameter, split across `threads` (each element's z depends on its
// index only, so the result does not depend on the split).
void perturb(const Flat& f, uint64_t key, Noise noise, double scale, double decay, unsigned threads) {
  const double keep = 1.0 - decay;
  const size_t min_chunk = 1 << 16;
  unsigned t = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(f.n / min_chunk)));
  if (t == 1) return perturb_range(f, key, noise, scale, keep, 0, f.n);
  size_t per = ((f.n + t - 1) / t + 63) / 64 * 64;  // even, and whole 64-bit rademacher draws
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < t; ++i) {
    const size_t a = std::min(f.n, per * i), b = std::min(f.n, per * (i + 1));
    if (a < b) pool.emplace_back(perturb_range, std::cref(f), key, noise, scale, keep, a, b);
  }
  perturb_range(f, key, noise, scale, keep, 0, std::min(f.n, per));
  for (auto& th : pool) th.join();
}

class MezoRule : public StepRule {
 public:
  explicit MezoRule(const TrainOptions& o) : o_(o) {}

  bool parse_flag(Args& a, std::string* problem) override {
    const std::string& f = a.flag();
    if (f == "--mezo") {
      chosen_ = true;
    } else if (f == "--mezo-eps" || f == "--zo-eps") {
      *problem = a.double_value(1e-12, 1.0, "a number in (0, 1]", &eps_);
    } else if (f == "--zo-samples") {
      *problem = a.int_value(1, &samples_);
    } else if (f == "--zo-noise") {
      std::string v;
      *problem = a.choice_value({"gaussian", "rademacher"}, "gaussian or rademacher", &v);
      noise_ = v == "rademacher" ? Noise::kRademacher : Noise::kGaussian;
    } else if (f == "--weights-in") {
      if (!a.value(&weights_in_) || weights_in_.empty()) *problem = "--weights-in needs a directory";
    } else {
      return false;
    }
    return true;
  }

  bool chosen() const override { return chosen_; }
  std::string usage() const override {
    return "         [--mezo --weights-in DIR [--zo-eps E] [--zo-samples N] [--zo-noise gaussian|rademacher]]\n"
           "           (zeroth-order: a weights-as-inputs forward program)\n";
  }

  Layout open(Module& module, const std::string& method, uint64_t seed) override {
    module_ = &module;
    method_ = method;
    seed_ = seed;
    read_names();
    auto meta = module.method_meta(method);
    if (!meta.ok()) fail("load", kExitLoad, meta.error(), "cannot read metadata of method " + method);
    const size_t n = names_.size();
    if (meta->num_inputs() != 2 + n || meta->num_outputs() < 1)
      fail("input", kExitInput, Error::InvalidArgument,
           "the MeZO program takes " + std::to_string(meta->num_inputs()) + " inputs; expected x, y and " +
               std::to_string(n) + " weights");
    auto x = meta->input_tensor_meta(0);
    auto y = meta->input_tensor_meta(1);
    if (!x.ok() || !y.ok() || y->scalar_type() != ScalarType::Long)
      fail("input", kExitInput, Error::InvalidArgument,
           "the MeZO program's x/y inputs are not tensors x [B,...], y [B,...] int64");
    std::vector<int64_t> xs(x->sizes().begin(), x->sizes().end()), ys(y->sizes().begin(), y->sizes().end());
    if (xs.empty() || ys.empty() || ys[0] != xs[0])
      fail("input", kExitInput, Error::InvalidArgument,
           "the MeZO program takes x " + shape_text(xs) + " and y " + shape_text(ys) + ": not one batch");
    l_.batch = xs[0];
    l_.sample_shape.assign(xs.begin() + 1, xs.end());
    l_.label_shape.assign(ys.begin() + 1, ys.end());
    l_.x_dtype = x->scalar_type();
    if (weights_in_.empty())
      fail("usage", kExitUsage, Error::InvalidArgument, "--method mezo needs --weights-in DIR (the starting weights)");
    for (size_t k = 0; k < n; ++k) read_weight(*meta, k);
    return l_;
  }

  std::vector<Param> bind(const Split& /*train*/) override {
    std::vector<Param> params;
    flat_ = Flat();
    for (size_t k = 0; k < w_.size(); ++k) {
      params.push_back({names_[k], w_[k].data(), w_[k].size(), std::vector<int64_t>(shape_[k].begin(), shape_[k].end())});
      flat_.add(w_[k].data(), w_[k].size());
    }
    auto* pool = executorch::extension::threadpool::get_threadpool();
    threads_ = pool ? static_cast<unsigned>(std::max<size_t>(1, pool->get_thread_count())) : 1u;
    return params;
  }

  RuleFacts facts() const override {
    RuleFacts f;
    f.algorithm = "mezo";
    f.optimizer = "mezo-sgd";
    f.fields = {{"eps", eps_}, {"samples", static_cast<double>(samples_)}};
    f.texts = {{"noise", noise_ == Noise::kRademacher ? "rademacher" : "gaussian"}};
    return f;
  }

  Scored score(const Split& s, const int64_t* idx) override {
    Scored r;
    r.loss = forward(s, idx, &r.correct, &r.execute_ns);
    return r;
  }

  // Per perturbation s of the step: two forwards at w + eps*z_s and w - eps*z_s give the projected
  // gradient g_s along z_s, and w is put back. Then w -= lr * mean_s(g_s z_s) (and the weight decay),
  // the last perturbation's restore and update in one pass. z_s is regenerated from its key each time.
  StepOutcome step(Batches& batches, double lr, State* st) override {
    const int64_t* idx = batches.next();
    const double eps = eps_;
    const int64_t n = samples_;
    StepOutcome out;
    std::vector<double> g(static_cast<size_t>(n));
    double loss = 0;
    for (int64_t s = 0; s < n; ++s) {
      const uint64_t key = step_key(seed_, st->step, s);
      perturb(flat_, key, noise_, eps, 0.0, threads_);
      const double lp = forward(batches.split(), idx, nullptr, &out.execute_ns);
      perturb(flat_, key, noise_, -2 * eps, 0.0, threads_);
      const double lm = forward(batches.split(), idx, nullptr, &out.execute_ns);
      g[static_cast<size_t>(s)] = (lp - lm) / (2 * eps);
      if (!std::isfinite(g[static_cast<size_t>(s)]))
        fail("execute", kExitExecute, Error::Internal,
             "the zeroth-order projected gradient became " + std::to_string(g[static_cast<size_t>(s)]) + " at step " +
                 std::to_string(st->step + 1) + " (diverged): lower --lr or --zo-eps");
      if (s + 1 < n) perturb(flat_, key, noise_, eps, 0.0, threads_);
      loss += 0.5 * (lp + lm);
    }
    double mean_g = 0;
    for (int64_t s = 0; s < n; ++s) {
      const double scale = -lr * g[static_cast<size_t>(s)] / static_cast<double>(n);
      const uint64_t key = step_key(seed_, st->step, s);
      if (s + 1 < n)
        perturb(flat_, key, noise_, scale, 0.0, threads_);
      else  // back from w - eps*z, then the update along z
        perturb(flat_, key, noise_, eps + scale, lr * o_.weight_decay, threads_);
      mean_g += g[static_cast<size_t>(s)] / static_cast<double>(n);
    }
    out.loss = loss / static_cast<double>(n);
    out.fields = {{"projected_grad", mean_g}};
    return out;
  }

 private:
  void read_names() {
    const std::string fqn_method = "__edgerun_mezo_fqn_" + method_;
    auto have = module_->method_names();
    if (!have.ok() || !have->count(fqn_method))
      fail("load", kExitLoad, Error::InvalidProgram,
           "--method mezo needs a MeZO program (forward(x, y, *weights) with a " + fqn_method +
               " method, as edgerun finetune --method mezo exports it)");
    auto fq = module_->execute(fqn_method);
    if (!fq.ok()) fail("load", kExitLoad, fq.error(), "cannot read the MeZO program's weight names");
    for (const auto& v : *fq)
      if (v.isString()) names_.emplace_back(v.toString());
  }

  // Weight k from --weights-in/NAME.npy: float32 of exactly the program's input shape.
  void read_weight(const executorch::runtime::MethodMeta& meta, size_t k) {
    auto info = meta.input_tensor_meta(2 + k);
    if (!info.ok() || info->scalar_type() != ScalarType::Float)
      fail("input", kExitInput, Error::InvalidArgument, "weight input " + names_[k] + " is not a float32 tensor");
    std::vector<int64_t> want(info->sizes().begin(), info->sizes().end());
    const std::string path = weights_in_ + "/" + safe_name(names_[k]) + ".npy";
    std::vector<uint8_t> bytes;
    std::string why;
    NpyArray arr;
    if (!read_file(path, &bytes, &why) || !parse_npy(bytes, &arr, &why))
      fail("input", kExitInput, Error::AccessFailed, "--weights-in: " + path + ": " + why);
    if (arr.dtype != ScalarType::Float || arr.shape != want)
      fail("input", kExitInput, Error::InvalidArgument,
           "--weights-in: " + path + " is " + dtype_text(arr.dtype) + " " + shape_text(arr.shape) +
               "; the program takes float32 " + shape_text(want));
    w_.emplace_back(arr.data.size() / sizeof(float));
    std::memcpy(w_.back().data(), arr.data.data(), arr.data.size());
    shape_.emplace_back(want.begin(), want.end());
  }

  // forward(x, y, *weights) on samples idx[0..B) of s: the loss; *correct from output 1 when asked.
  double forward(const Split& s, const int64_t* idx, int64_t* correct, int64_t* exec_ns) {
    const int64_t B = l_.batch;
    xbuf_.resize(s.sample_bytes * static_cast<size_t>(B));
    const int64_t L = s.label_elems;
    ybuf_.resize(static_cast<size_t>(B * L));
    const auto* labels = reinterpret_cast<const int64_t*>(s.y.data.data());
    for (int64_t i = 0; i < B; ++i) {
      std::memcpy(xbuf_.data() + i * s.sample_bytes, s.x.data.data() + idx[i] * s.sample_bytes, s.sample_bytes);
      std::memcpy(ybuf_.data() + i * L, labels + idx[i] * L, static_cast<size_t>(L) * sizeof(int64_t));
    }
    std::vector<executorch::aten::SizesType> xsz = {static_cast<executorch::aten::SizesType>(B)};
    for (int64_t d : l_.sample_shape) xsz.push_back(static_cast<executorch::aten::SizesType>(d));
    // the tensors must outlive set_inputs/execute: an EValue only points at its TensorImpl
    std::vector<executorch::extension::TensorPtr> keep;
    keep.push_back(executorch::extension::from_blob(xbuf_.data(), xsz, l_.x_dtype));
    std::vector<executorch::aten::SizesType> ysz = {static_cast<executorch::aten::SizesType>(B)};
    for (int64_t d : l_.label_shape) ysz.push_back(static_cast<executorch::aten::SizesType>(d));
    keep.push_back(executorch::extension::from_blob(ybuf_.data(), ysz, ScalarType::Long));
    for (size_t k = 0; k < w_.size(); ++k) keep.push_back(executorch::extension::from_blob(w_[k].data(), shape_[k]));
    std::vector<EValue> in;
    for (auto& t : keep) in.emplace_back(t);
    Error e = module_->set_inputs(method_, in);
    if (e != Error::Ok) fail("input", kExitInput, e, "set_inputs(" + method_ + ") failed with " + error_name(e));
    auto t0 = Clock::now();
    auto res = module_->execute(method_);
    if (exec_ns) *exec_ns += ns_between(t0, Clock::now());
    if (!res.ok()) fail("execute", kExitExecute, res.error(), "the MeZO forward failed with " + error_name(res.error()));
    out_ = std::move(*res);
    if (correct && out_.size() > 1 && out_[1].isTensor()) *correct = count_correct(out_[1].toTensor(), ybuf_.data(), B * L);
    return out_[0].toTensor().const_data_ptr<float>()[0];
  }

  const TrainOptions& o_;
  bool chosen_ = false;
  double eps_ = 1e-3;       // perturbation scale
  int64_t samples_ = 1;     // perturbations averaged per step
  Noise noise_ = Noise::kGaussian;
  Flat flat_;               // the trainable weights as one vector (w_'s buffers)
  unsigned threads_ = 1;
  std::string weights_in_;  // dir of the starting weights, NAME.npy
  Module* module_ = nullptr;
  std::string method_;
  uint64_t seed_ = 0;
  Layout l_;
  std::vector<std::string> names_;
  std::vector<std::vector<float>> w_;
  std::vector<std::vector<executorch::aten::SizesType>> shape_;
  std::vector<uint8_t> xbuf_;
  std::vector<int64_t> ybuf_;
  std::vector<EValue> out_;
};

}  // namespace

std::unique_ptr<StepRule> make_mezo_rule(const TrainOptions& o) { return std::make_unique<MezoRule>(o); }

}  // namespace edgerun
