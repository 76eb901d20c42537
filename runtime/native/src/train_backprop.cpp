// The backprop step rule: an ExecuTorch training program computes the loss and the gradients,
// the runner applies SGD (momentum) or AdamW to the parameters it returns, with gradient
// accumulation over --grad-accum batches.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>

#include "train.h"

namespace edgerun {

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

// Where the training program's outputs hold the gradients and the parameters, and their names.
struct ProgramLayout {
  int64_t grads = 0, params = 0, count = 0;
  std::vector<std::string> names;
};

int64_t index_method(Module& module, const std::string& name) {
  auto r = module.execute(name);
  if (!r.ok() || r->empty() || !(*r)[0].isInt())
    fail("load", kExitLoad, r.ok() ? Error::InvalidProgram : r.error(),
         "the training program's " + name + " did not return an index");
  return (*r)[0].toInt();
}

ProgramLayout read_program_layout(Module& module, const std::string& method) {
  const std::string suffix = "_" + method;
  auto names = module.method_names();
  if (!names.ok() || !names->count("__et_training_fqn" + suffix))
    fail("load", kExitLoad, Error::InvalidProgram,
         "--train needs a training program (exported with torch.export.experimental._export_forward_backward): "
         "this one has no __et_training_fqn" + suffix + " method");
  ProgramLayout p;
  p.grads = index_method(module, "__et_training_gradients_index" + suffix);
  p.params = index_method(module, "__et_training_parameters_index" + suffix);
  auto fqn = module.execute("__et_training_fqn" + suffix);
  if (!fqn.ok()) fail("load", kExitLoad, fqn.error(), "cannot read the training program's parameter names");
  for (const auto& v : *fqn)
    if (v.isString()) p.names.emplace_back(v.toString());
  p.count = static_cast<int64_t>(p.names.size());
  return p;
}

// The batch shapes of forward(x [B,...], y [B,...] int64), checked against the output layout.
Layout read_batch_layout(Module& module, const std::string& method, const ProgramLayout& p) {
  auto meta = module.method_meta(method);
  if (!meta.ok()) fail("load", kExitLoad, meta.error(), "cannot read metadata of method " + method);
  if (meta->num_inputs() != 2)
    fail("input", kExitInput, Error::InvalidArgument,
         "--train needs " + method + "(x [B,...], y [B] int64); this one takes " +
             std::to_string(meta->num_inputs()) + " input(s)");
  if (static_cast<int64_t>(meta->num_outputs()) < p.params + p.count || p.grads + p.count > p.params)
    fail("load", kExitLoad, Error::InvalidProgram, "the training program's output layout is inconsistent");
  auto x = meta->input_tensor_meta(0);
  auto y = meta->input_tensor_meta(1);
  if (!x.ok() || !y.ok()) fail("input", kExitInput, Error::InvalidArgument, "the training inputs are not tensors");
  std::vector<int64_t> xs(x->sizes().begin(), x->sizes().end()), ys(y->sizes().begin(), y->sizes().end());
  if (xs.empty() || ys.empty() || ys[0] != xs[0] || y->scalar_type() != ScalarType::Long)
    fail("input", kExitInput, Error::InvalidArgument,
         "--train needs " + method + "(x [B,...], y [B,...] int64); this one takes " + dtype_text(x->scalar_type()) +
             " " + shape_text(xs) + ", " + dtype_text(y->scalar_type()) + " " + shape_text(ys));
  Layout l;
  l.batch = xs[0];
  l.sample_shape.assign(xs.begin() + 1, xs.end());
  l.label_shape.assign(ys.begin() + 1, ys.end());
  l.x_dtype = x->scalar_type();
  return l;
}

class BackpropRule : public StepRule {
 public:
  explicit BackpropRule(const TrainOptions& o) : o_(o) {}

  bool parse_flag(Args& a, std::string* problem) override {
    const std::string& f = a.flag();
    if (f == "--grad-accum") {
      *problem = a.int_value(1, &grad_accum_);
    } else if (f == "--momentum") {
      *problem = a.double_value(0.0, 0.999999, "a number in [0, 1)", &momentum_);
    } else if (f == "--optimizer") {
      *problem = a.choice_value({"sgd", "adamw"}, "sgd or adamw", &optimizer_);
    } else {
      return false;
    }
    return true;
  }

  bool chosen() const override { return true; }  // the default rule

  Layout open(Module& module, const std::string& method, uint64_t /*seed*/) override {
    module_ = &module;
    method_ = method;
    p_ = read_program_layout(module, method);
    l_ = read_batch_layout(module, method, p_);
    return l_;
  }

  // The first forward binds the parameter outputs (a resumed run then overwrites them).
  std::vector<Param> bind(const Split& train) override {
    std::vector<int64_t> first(static_cast<size_t>(l_.batch));
    std::iota(first.begin(), first.end(), 0);
    run(train, first.data());
    check_params();
    std::vector<Param> params;
    for (int64_t k = 0; k < p_.count; ++k) {
      const auto& t = out_[static_cast<size_t>(p_.params + k)].toTensor();
      params.push_back({p_.names[static_cast<size_t>(k)], param(k), numel(k),
                        std::vector<int64_t>(t.sizes().begin(), t.sizes().end())});
      acc_.emplace_back(numel(k), 0.0f);
    }
    return params;
  }

  void init_state(State* st) override {
    const bool adam = optimizer_ == "adamw";
    if (!adam && momentum_ <= 0) return;
    if (st->m.empty())
      for (int64_t k = 0; k < p_.count; ++k) st->m.emplace_back(numel(k), 0.0f);
    if (adam && st->v.empty())
      for (int64_t k = 0; k < p_.count; ++k) st->v.emplace_back(numel(k), 0.0f);
  }

  RuleFacts facts() const override {
    RuleFacts f;
    f.optimizer = optimizer_;
    f.batches_per_step = grad_accum_;
    f.state_copies = optimizer_ == "adamw" ? 2 : (momentum_ > 0 ? 1 : 0);
    return f;
  }

  Scored score(const Split& s, const int64_t* idx) override { return run(s, idx); }

  StepOutcome step(Batches& batches, double lr, State* st) override {
    StepOutcome out;
    for (int64_t a = 0; a < grad_accum_; ++a) {
      Scored r = run(batches.split(), batches.next());
      out.loss += r.loss;
      out.execute_ns += r.execute_ns;
      accumulate(a == 0);
    }
    update(lr, st);
    out.loss /= grad_accum_;
    if (!std::isfinite(out.loss))
      fail("execute", kExitExecute, Error::Internal,
           "the loss became " + std::to_string(out.loss) + " at step " + std::to_string(st->step + 1) +
               " (diverged): lower --lr");
    return out;
  }

 private:
  // One forward+backward on samples idx[0..B) of split s; keeps the outputs.
  Scored run(const Split& s, const int64_t* idx) {
    const int64_t B = l_.batch;
    xbuf_.resize(s.sample_bytes * static_cast<size_t>(B));
    const int64_t L = s.label_elems;
    ybuf_.resize(static_cast<size_t>(B * L));
    const auto* labels = reinterpret_cast<const int64_t*>(s.y.data.data());
    for (int64_t i = 0; i < B; ++i) {
      std::memcpy(xbuf_.data() + i * s.sample_bytes, s.x.data.data() + idx[i] * s.sample_bytes, s.sample_bytes);
      std::memcpy(ybuf_.data() + i * L, labels + idx[i] * L, static_cast<size_t>(L) * sizeof(int64_t));
    }
    std::vector<executorch::aten::SizesType> xs = {static_cast<executorch::aten::SizesType>(B)};
    for (int64_t d : l_.sample_shape) xs.push_back(static_cast<executorch::aten::SizesType>(d));
    auto x = executorch::extension::from_blob(xbuf_.data(), xs, l_.x_dtype);
    std::vector<executorch::aten::SizesType> ys = {static_cast<executorch::aten::SizesType>(B)};
    for (int64_t d : l_.label_shape) ys.push_back(static_cast<executorch::aten::SizesType>(d));
    auto y = executorch::extension::from_blob(ybuf_.data(), ys, ScalarType::Long);
    std::vector<EValue> in;
    in.emplace_back(x);
    in.emplace_back(y);
    Error e = module_->set_inputs(method_, in);
    if (e != Error::Ok) fail("input", kExitInput, e, "set_inputs(" + method_ + ") failed with " + error_name(e));
    auto t0 = Clock::now();
    auto res = module_->execute(method_);
    auto t1 = Clock::now();
    if (!res.ok()) fail("execute", kExitExecute, res.error(), "the training step failed with " + error_name(res.error()));
    out_ = std::move(*res);
    Scored r;
    r.execute_ns = ns_between(t0, t1);
    if (!out_[0].isTensor() || out_[0].toTensor().scalar_type() != ScalarType::Float)
      fail("output", kExitOutput, Error::InvalidArgument, "output 0 (the loss) is not a float tensor");
    r.loss = out_[0].toTensor().const_data_ptr<float>()[0];
    if (p_.grads > 1 && out_[1].isTensor()) r.correct = count_correct(out_[1].toTensor(), ybuf_.data(), B * L);
    return r;
  }

  // The parameter tensors (they alias the method's memory: writing them changes the model).
  float* param(int64_t k) { return out_[static_cast<size_t>(p_.params + k)].toTensor().mutable_data_ptr<float>(); }
  const float* grad(int64_t k) const {
    return out_[static_cast<size_t>(p_.grads + k)].toTensor().const_data_ptr<float>();
  }
  size_t numel(int64_t k) const { return static_cast<size_t>(out_[static_cast<size_t>(p_.params + k)].toTensor().numel()); }

  void check_params() {
    for (int64_t k = 0; k < p_.count; ++k) {
      const auto& p = out_[static_cast<size_t>(p_.params + k)];
      const auto& g = out_[static_cast<size_t>(p_.grads + k)];
      if (!p.isTensor() || !g.isTensor() || p.toTensor().scalar_type() != ScalarType::Float ||
          g.toTensor().numel() != p.toTensor().numel())
        fail("load", kExitLoad, Error::NotSupported,
             "parameter " + p_.names[static_cast<size_t>(k)] + " is not a float32 tensor with a matching gradient; "
             "train mode updates float32 parameters only");
    }
  }

  // The last forward's gradients into the accumulators (the first batch of a step replaces them).
  void accumulate(bool first) {
    for (int64_t p = 0; p < p_.count; ++p) {
      const float* g = grad(p);
      auto& dst = acc_[static_cast<size_t>(p)];
      if (first) std::copy(g, g + dst.size(), dst.begin());
      else for (size_t i = 0; i < dst.size(); ++i) dst[i] += g[i];
    }
  }

  // The optimizer step with the averaged gradients: AdamW, or SGD with momentum and L2.
  void update(double lr, State* st) {
    const float inv = 1.0f / static_cast<float>(grad_accum_);
    const double b1t = 1.0 - std::pow(kBeta1, static_cast<double>(st->step + 1));
    const double b2t = 1.0 - std::pow(kBeta2, static_cast<double>(st->step + 1));
    for (int64_t p = 0; p < p_.count; ++p) {
      float* w = param(p);
      auto& g = acc_[static_cast<size_t>(p)];
      const size_t n = g.size();
      if (optimizer_ == "adamw") {
        auto& m = st->m[static_cast<size_t>(p)];
        auto& v = st->v[static_cast<size_t>(p)];
        for (size_t i = 0; i < n; ++i) {
          const double gi = g[i] * inv;
          m[i] = static_cast<float>(kBeta1 * m[i] + (1 - kBeta1) * gi);
          v[i] = static_cast<float>(kBeta2 * v[i] + (1 - kBeta2) * gi * gi);
          const double upd = (m[i] / b1t) / (std::sqrt(v[i] / b2t) + kEps) + o_.weight_decay * w[i];
          w[i] = static_cast<float>(w[i] - lr * upd);
        }
      } else {
        for (size_t i = 0; i < n; ++i) {
          double gi = g[i] * inv + o_.weight_decay * w[i];
          if (momentum_ > 0) {
            auto& m = st->m[static_cast<size_t>(p)];
            m[i] = static_cast<float>(momentum_ * m[i] + gi);
            gi = m[i];
          }
          w[i] = static_cast<float>(w[i] - lr * gi);
        }
      }
    }
  }

  static constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;

  const TrainOptions& o_;
  int64_t grad_accum_ = 1;            // batches per optimizer step
  std::string optimizer_ = "sgd";     // sgd | adamw
  double momentum_ = 0.0;             // sgd
  Module* module_ = nullptr;
  std::string method_;
  ProgramLayout p_;
  Layout l_;
  std::vector<uint8_t> xbuf_;
  std::vector<int64_t> ybuf_;
  std::vector<EValue> out_;
  std::vector<std::vector<float>> acc_;  // the step's summed gradients
};

}  // namespace

std::unique_ptr<StepRule> make_backprop_rule(const TrainOptions& o) { return std::make_unique<BackpropRule>(o); }

}  // namespace edgerun
