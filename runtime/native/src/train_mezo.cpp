// The MeZO step rule: zeroth-order SGD on the inference-only program forward(x, y, *weights) ->
// (loss, pred). The weights live in the runner's buffers; each step perturbs them by +-eps*z with
// z ~ N(0, 1) drawn from a seed (never stored: regenerated for every pass), so memory is the
// inference's plus the weights.
#include <cmath>
#include <cstring>
#include <random>

#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>

#include "train.h"

namespace edgerun {

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

// w = w * (1 - decay_lr) + scale * z, z drawn afresh from step_seed (Box-Muller, both values used).
void perturb(std::vector<std::vector<float>>& w, uint64_t step_seed, double scale, double decay_lr = 0.0) {
  std::mt19937_64 rng(step_seed);
  bool have = false;
  double spare = 0;
  for (auto& t : w) {
    for (auto& v : t) {
      double z;
      if (have) {
        z = spare;
        have = false;
      } else {
        const double u1 = 1.0 - unit_draw(&rng), u2 = unit_draw(&rng);
        const double r = std::sqrt(-2.0 * std::log(u1));
        z = r * std::cos(2 * M_PI * u2);
        spare = r * std::sin(2 * M_PI * u2);
        have = true;
      }
      v = static_cast<float>(v * (1.0 - decay_lr) + scale * z);
    }
  }
}

class MezoRule : public StepRule {
 public:
  explicit MezoRule(const TrainOptions& o) : o_(o) {}

  bool parse_flag(Args& a, std::string* problem) override {
    const std::string& f = a.flag();
    if (f == "--mezo") {
      chosen_ = true;
    } else if (f == "--mezo-eps") {
      std::string v;
      if (!a.value(&v) || !parse_double(v, 1e-12, 1.0, &eps_)) *problem = "--mezo-eps needs a number in (0, 1], got '" + v + "'";
    } else if (f == "--weights-in") {
      if (!a.value(&weights_in_) || weights_in_.empty()) *problem = "--weights-in needs a directory";
    } else {
      return false;
    }
    return true;
  }

  bool chosen() const override { return chosen_; }
  std::string usage() const override {
    return "         [--mezo --weights-in DIR [--mezo-eps E]]  (zeroth-order: a weights-as-inputs forward program)\n";
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
      fail("input", kExitInput, Error::InvalidArgument, "the MeZO program's x/y inputs are not tensors x, y [B] int64");
    std::vector<int64_t> xs(x->sizes().begin(), x->sizes().end());
    l_.batch = xs[0];
    l_.sample_shape.assign(xs.begin() + 1, xs.end());
    l_.x_dtype = x->scalar_type();
    if (weights_in_.empty())
      fail("usage", kExitUsage, Error::InvalidArgument, "--method mezo needs --weights-in DIR (the starting weights)");
    for (size_t k = 0; k < n; ++k) read_weight(*meta, k);
    return l_;
  }

  std::vector<Param> bind(const Split& /*train*/) override {
    std::vector<Param> params;
    for (size_t k = 0; k < w_.size(); ++k)
      params.push_back({names_[k], w_[k].data(), w_[k].size(), std::vector<int64_t>(shape_[k].begin(), shape_[k].end())});
    return params;
  }

  RuleFacts facts() const override {
    RuleFacts f;
    f.algorithm = "mezo";
    f.optimizer = "mezo-sgd";
    f.fields = {{"eps", eps_}};
    return f;
  }

  Scored score(const Split& s, const int64_t* idx) override {
    Scored r;
    r.loss = forward(s, idx, &r.correct, &r.execute_ns);
    return r;
  }

  // Two forwards at w + eps*z and w - eps*z give the projected gradient g along z; then
  // w -= lr * g * z (and the weight decay), z regenerated from the step's seed every time.
  StepOutcome step(Batches& batches, double lr, State* st) override {
    const int64_t* idx = batches.next();
    const uint64_t z_seed = seed_ * 0xD1B54A32D192ED03ULL + static_cast<uint64_t>(st->step) + 7;
    const double eps = eps_;
    StepOutcome out;
    perturb(w_, z_seed, eps);
    const double lp = forward(batches.split(), idx, nullptr, &out.execute_ns);
    perturb(w_, z_seed, -2 * eps);
    const double lm = forward(batches.split(), idx, nullptr, &out.execute_ns);
    const double g = (lp - lm) / (2 * eps);
    if (!std::isfinite(g))
      fail("execute", kExitExecute, Error::Internal,
           "the MeZO projected gradient became " + std::to_string(g) + " at step " + std::to_string(st->step + 1) +
               " (diverged): lower --lr or --mezo-eps");
    perturb(w_, z_seed, eps - lr * g, lr * o_.weight_decay);  // back to w, then the update along z
    out.loss = 0.5 * (lp + lm);
    out.fields = {{"projected_grad", g}};
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
    ybuf_.resize(static_cast<size_t>(B));
    const auto* labels = reinterpret_cast<const int64_t*>(s.y.data.data());
    for (int64_t i = 0; i < B; ++i) {
      std::memcpy(xbuf_.data() + i * s.sample_bytes, s.x.data.data() + idx[i] * s.sample_bytes, s.sample_bytes);
      ybuf_[static_cast<size_t>(i)] = labels[idx[i]];
    }
    std::vector<executorch::aten::SizesType> xsz = {static_cast<executorch::aten::SizesType>(B)};
    for (int64_t d : l_.sample_shape) xsz.push_back(static_cast<executorch::aten::SizesType>(d));
    // the tensors must outlive set_inputs/execute: an EValue only points at its TensorImpl
    std::vector<executorch::extension::TensorPtr> keep;
    keep.push_back(executorch::extension::from_blob(xbuf_.data(), xsz, l_.x_dtype));
    keep.push_back(executorch::extension::from_blob(ybuf_.data(), {static_cast<executorch::aten::SizesType>(B)},
                                                    ScalarType::Long));
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
    if (correct && out_.size() > 1 && out_[1].isTensor()) *correct = count_correct(out_[1].toTensor(), ybuf_.data(), B);
    return out_[0].toTensor().const_data_ptr<float>()[0];
  }

  const TrainOptions& o_;
  bool chosen_ = false;
  double eps_ = 1e-3;       // perturbation scale
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
