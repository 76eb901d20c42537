// The runner's train mode: SGD (momentum) / AdamW with gradient accumulation and a learning-rate
// schedule, evaluation on a held-out split, atomic checkpoints and --resume, all on the device.
#include "train.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>

#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>

#include "json_out.h"
#include "mode.h"
#include "npy.h"
#include "runner_common.h"

namespace edgerun {

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

constexpr char kCheckpointMagic[8] = {'E', 'R', 'C', 'K', 'P', 'T', '0', '1'};


struct Split {
  NpyArray x, y;
  int64_t n = 0;
  size_t sample_bytes = 0;
  int64_t label_elems = 1;  // labels per sample: 1 for a class, T for next-token targets [N, T]
};

Split load_split(const std::string& data, const std::string& labels, const char* what) {
  Split s;
  for (auto [path, arr] : {std::pair<const std::string*, NpyArray*>{&data, &s.x}, {&labels, &s.y}}) {
    std::vector<uint8_t> bytes;
    std::string why;
    if (!read_file(*path, &bytes, &why)) fail("input", kExitInput, Error::AccessFailed, std::string(what) + ": " + why);
    if (!looks_like_npy(bytes) || !parse_npy(bytes, arr, &why))
      fail("input", kExitInput, Error::InvalidArgument,
           std::string(what) + " " + *path + " is not a readable .npy" + (why.empty() ? "" : ": " + why));
  }
  if (s.x.shape.empty() || s.y.shape.empty() || s.x.shape[0] != s.y.shape[0])
    fail("input", kExitInput, Error::InvalidArgument,
         std::string(what) + ": inputs " + data + " " + shape_text(s.x.shape) + " and labels " + labels + " " +
             shape_text(s.y.shape) + " must be [N, ...] and [N, ...] with the same N");
  if (s.y.dtype != ScalarType::Long)
    fail("input", kExitInput, Error::InvalidArgument,
         std::string(what) + ": labels " + labels + " are " + dtype_text(s.y.dtype) + "; int64 labels are expected");
  s.n = s.x.shape[0];
  s.sample_bytes = s.n ? s.x.data.size() / static_cast<size_t>(s.n) : 0;
  for (size_t d = 1; d < s.y.shape.size(); ++d) s.label_elems *= s.y.shape[d];
  return s;
}

struct Layout {
  int64_t grads = 0, params = 0, count = 0, batch = 0;
  std::vector<std::string> names;
  std::vector<int64_t> sample_shape, label_shape;
  ScalarType x_dtype = ScalarType::Float;
};

int64_t index_method(Module& module, const std::string& name) {
  auto r = module.execute(name);
  if (!r.ok() || r->empty() || !(*r)[0].isInt())
    fail("load", kExitLoad, r.ok() ? Error::InvalidProgram : r.error(),
         "the training program's " + name + " did not return an index");
  return (*r)[0].toInt();
}

Layout read_layout(Module& module, const std::string& method) {
  const std::string suffix = "_" + method;
  auto names = module.method_names();
  if (!names.ok() || !names->count("__et_training_fqn" + suffix))
    fail("load", kExitLoad, Error::InvalidProgram,
         "--train needs a training program (exported with torch.export.experimental._export_forward_backward): "
         "this one has no __et_training_fqn" + suffix + " method");
  Layout l;
  l.grads = index_method(module, "__et_training_gradients_index" + suffix);
  l.params = index_method(module, "__et_training_parameters_index" + suffix);
  auto fqn = module.execute("__et_training_fqn" + suffix);
  if (!fqn.ok()) fail("load", kExitLoad, fqn.error(), "cannot read the training program's parameter names");
  for (const auto& v : *fqn)
    if (v.isString()) l.names.emplace_back(v.toString());
  l.count = static_cast<int64_t>(l.names.size());
  auto meta = module.method_meta(method);
  if (!meta.ok()) fail("load", kExitLoad, meta.error(), "cannot read metadata of method " + method);
  if (meta->num_inputs() != 2)
    fail("input", kExitInput, Error::InvalidArgument,
         "--train needs " + method + "(x [B,...], y [B] int64); this one takes " +
             std::to_string(meta->num_inputs()) + " input(s)");
  if (static_cast<int64_t>(meta->num_outputs()) < l.params + l.count || l.grads + l.count > l.params)
    fail("load", kExitLoad, Error::InvalidProgram, "the training program's output layout is inconsistent");
  auto x = meta->input_tensor_meta(0);
  auto y = meta->input_tensor_meta(1);
  if (!x.ok() || !y.ok()) fail("input", kExitInput, Error::InvalidArgument, "the training inputs are not tensors");
  std::vector<int64_t> xs(x->sizes().begin(), x->sizes().end()), ys(y->sizes().begin(), y->sizes().end());
  if (xs.empty() || ys.empty() || ys[0] != xs[0] || y->scalar_type() != ScalarType::Long)
    fail("input", kExitInput, Error::InvalidArgument,
         "--train needs " + method + "(x [B,...], y [B,...] int64); this one takes " + dtype_text(x->scalar_type()) +
             " " + shape_text(xs) + ", " + dtype_text(y->scalar_type()) + " " + shape_text(ys));
  l.batch = xs[0];
  l.sample_shape.assign(xs.begin() + 1, xs.end());
  l.label_shape.assign(ys.begin() + 1, ys.end());
  l.x_dtype = x->scalar_type();
  return l;
}

void check_split(const Split& s, const Layout& l, const char* what) {
  std::vector<int64_t> sample(s.x.shape.begin() + 1, s.x.shape.end());
  if (sample != l.sample_shape || s.x.dtype != l.x_dtype)
    fail("input", kExitInput, Error::InvalidArgument,
         std::string(what) + " holds " + dtype_text(s.x.dtype) + " samples of shape " + shape_text(sample) +
             "; the program trains on " + dtype_text(l.x_dtype) + " " + shape_text(l.sample_shape));
  std::vector<int64_t> lab(s.y.shape.begin() + 1, s.y.shape.end());
  if (lab != l.label_shape)
    fail("input", kExitInput, Error::InvalidArgument,
         std::string(what) + " labels are " + shape_text(lab) + " per sample; the program takes " +
             shape_text(l.label_shape));
  if (s.n < l.batch)
    fail("input", kExitInput, Error::InvalidArgument,
         std::string(what) + " has " + std::to_string(s.n) + " samples, fewer than one batch of " +
             std::to_string(l.batch) + " (the batch size the program was exported with)");
}

// Batch k of an epoch: a permutation of the split drawn from (seed, epoch), the same on every platform.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (!shuffle) return order;
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch) + 1);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[static_cast<size_t>(rng() % (i + 1))]);
  return order;
}

class Trainer {
 public:
  Trainer(Module& module, std::string method, Layout layout, const TrainOptions& o, uint64_t seed)
      : module_(module), method_(std::move(method)), l_(std::move(layout)), o_(o), seed_(seed) {}

  struct Result {
    double loss = NAN;
    int64_t correct = -1;  // -1: no prediction output to score
    int64_t execute_ns = 0;
  };

  // One forward+backward on samples idx[0..B) of split s; keeps the outputs.
  Result run(const Split& s, const int64_t* idx) {
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
    Error e = module_.set_inputs(method_, in);
    if (e != Error::Ok) fail("input", kExitInput, e, "set_inputs(" + method_ + ") failed with " + error_name(e));
    auto t0 = Clock::now();
    auto res = module_.execute(method_);
    auto t1 = Clock::now();
    if (!res.ok()) fail("execute", kExitExecute, res.error(), "the training step failed with " + error_name(res.error()));
    out_ = std::move(*res);
    Result r;
    r.execute_ns = ns_between(t0, t1);
    if (!out_[0].isTensor() || out_[0].toTensor().scalar_type() != ScalarType::Float)
      fail("output", kExitOutput, Error::InvalidArgument, "output 0 (the loss) is not a float tensor");
    r.loss = out_[0].toTensor().const_data_ptr<float>()[0];
    if (l_.grads > 1 && out_[1].isTensor()) r.correct = count_correct(out_[1].toTensor(), ybuf_.data(), B * L);
    return r;
  }

  // How many of the n labels the prediction output gets right: predicted ids [n], or scores [n, C].
  static int64_t count_correct(const executorch::aten::Tensor& pred, const int64_t* labels, int64_t B) {
    int64_t correct = 0;
    if (pred.scalar_type() == ScalarType::Long && pred.numel() == B) {
      const int64_t* p = pred.const_data_ptr<int64_t>();
      for (int64_t i = 0; i < B; ++i) correct += p[i] == labels[i];
    } else if (pred.scalar_type() == ScalarType::Float && pred.dim() >= 2 &&
               pred.numel() == B * pred.size(pred.dim() - 1)) {
      const float* p = pred.const_data_ptr<float>();
      const int64_t C = pred.size(pred.dim() - 1);
      for (int64_t i = 0; i < B; ++i) correct += (std::max_element(p + i * C, p + (i + 1) * C) - (p + i * C)) == labels[i];
    } else {
      return -1;
    }
    return correct;
  }

  // The parameter tensors (they alias the method's memory: writing them changes the model).
  float* param(int64_t k) { return out_[static_cast<size_t>(l_.params + k)].toTensor().mutable_data_ptr<float>(); }
  const float* grad(int64_t k) const {
    return out_[static_cast<size_t>(l_.grads + k)].toTensor().const_data_ptr<float>();
  }
  size_t numel(int64_t k) const { return static_cast<size_t>(out_[static_cast<size_t>(l_.params + k)].toTensor().numel()); }
  std::vector<int64_t> shape(int64_t k) const {
    const auto& t = out_[static_cast<size_t>(l_.params + k)].toTensor();
    return std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
  }
  void check_params() {
    for (int64_t k = 0; k < l_.count; ++k) {
      const auto& p = out_[static_cast<size_t>(l_.params + k)];
      const auto& g = out_[static_cast<size_t>(l_.grads + k)];
      if (!p.isTensor() || !g.isTensor() || p.toTensor().scalar_type() != ScalarType::Float ||
          g.toTensor().numel() != p.toTensor().numel())
        fail("load", kExitLoad, Error::NotSupported,
             "parameter " + l_.names[static_cast<size_t>(k)] + " is not a float32 tensor with a matching gradient; "
             "train mode updates float32 parameters only");
    }
  }

  std::vector<EValue>& outputs() { return out_; }

 private:
  Module& module_;
  std::string method_;
  Layout l_;
  const TrainOptions& o_;
  uint64_t seed_;
  std::vector<uint8_t> xbuf_;
  std::vector<int64_t> ybuf_;
  std::vector<EValue> out_;
};

double lr_at(const TrainOptions& o, int64_t step) {  // step counts from 0
  if (o.warmup_steps > 0 && step < o.warmup_steps) return o.lr * static_cast<double>(step + 1) / o.warmup_steps;
  if (o.schedule == "cosine") {
    const double span = std::max<int64_t>(1, o.steps - o.warmup_steps);
    const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
    return o.lr * 0.5 * (1.0 + std::cos(M_PI * t));
  }
  return o.lr;
}

struct State {
  int64_t step = 0;      // optimizer steps done
  int64_t batches = 0;   // training batches consumed (the data position)
  std::vector<std::vector<float>> m, v;
};

bool write_all(FILE* f, const void* p, size_t n) { return std::fwrite(p, 1, n, f) == n; }
bool read_all(FILE* f, void* p, size_t n) { return std::fread(p, 1, n, f) == n; }

struct ParamView {
  float* data;
  size_t n;
};

int64_t save_checkpoint(const std::string& path, const std::vector<ParamView>& params, const State& st) {
  const std::string tmp = path + ".part";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  bool ok = f != nullptr;
  auto put64 = [&](int64_t v) { ok = ok && write_all(f, &v, sizeof v); };
  if (ok) ok = write_all(f, kCheckpointMagic, sizeof kCheckpointMagic);
  put64(st.step);
  put64(st.batches);
  put64(static_cast<int64_t>(params.size()));
  put64(static_cast<int64_t>(st.m.size()));
  put64(static_cast<int64_t>(st.v.size()));
  for (const auto& p : params) {
    put64(static_cast<int64_t>(p.n));
    ok = ok && write_all(f, p.data, p.n * sizeof(float));
  }
  for (const auto* bufs : {&st.m, &st.v})
    for (const auto& b : *bufs) ok = ok && write_all(f, b.data(), b.size() * sizeof(float));
  if (f) ok = (std::fflush(f) == 0) && ok;
  if (f) ok = (::fsync(fileno(f)) == 0) && ok;
  if (f) ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("output", kExitOutput, Error::AccessFailed, "cannot write the checkpoint " + path + ": " + std::strerror(errno));
  }
  struct stat sb;
  return ::stat(path.c_str(), &sb) == 0 ? static_cast<int64_t>(sb.st_size) : -1;
}

void load_checkpoint(const std::string& path, const std::vector<ParamView>& params, State* st) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail("input", kExitInput, Error::AccessFailed, "--resume: cannot open " + path + ": " + std::strerror(errno));
  char magic[8];
  int64_t count = 0, nm = 0, nv = 0;
  bool ok = read_all(f, magic, 8) && std::memcmp(magic, kCheckpointMagic, 8) == 0 && read_all(f, &st->step, 8) &&
            read_all(f, &st->batches, 8) && read_all(f, &count, 8) && read_all(f, &nm, 8) && read_all(f, &nv, 8);
  ok = ok && count == static_cast<int64_t>(params.size()) && (nm == 0 || nm == count) && (nv == 0 || nv == count) &&
       st->step >= 0;
  for (size_t k = 0; ok && k < params.size(); ++k) {
    int64_t n = 0;
    ok = read_all(f, &n, 8) && n == static_cast<int64_t>(params[k].n) &&
         read_all(f, params[k].data, params[k].n * sizeof(float));
  }
  st->m.assign(static_cast<size_t>(nm), {});
  st->v.assign(static_cast<size_t>(nv), {});
  for (auto* bufs : {&st->m, &st->v})
    for (size_t k = 0; ok && k < bufs->size(); ++k) {
      (*bufs)[k].resize(params[k].n);
      ok = read_all(f, (*bufs)[k].data(), (*bufs)[k].size() * sizeof(float));
    }
  std::fclose(f);
  if (!ok)
    fail("input", kExitInput, Error::InvalidArgument,
         "--resume: " + path + " is not a checkpoint of this program (wrong magic, parameter count or sizes, "
         "or truncated)");
}

std::string safe_name(const std::string& fqn) {
  std::string s;
  for (char c : fqn) s.push_back(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ? c : '_');
  return s.empty() || s[0] == '.' ? "_" + s : s;
}


void emit_eval(const char* when, int64_t step, int64_t seen, double loss_sum, int64_t correct, bool scored,
               int64_t exec_ns, int64_t scored_labels = 0) {
  edgerun::JsonLine line;
  line.str("type", "eval").str("when", when).num("step", step).num("samples", seen).dbl("loss", loss_sum / seen);
  const int64_t denom = scored_labels > 0 ? scored_labels : seen;
  if (scored) line.dbl("accuracy", static_cast<double>(correct) / denom);
  else line.null("accuracy");
  line.num("execute_ns", exec_ns).emit();
}

void checkpoint_now(const std::string& path, const std::vector<ParamView>& views, const State& st) {
  int64_t bytes = save_checkpoint(path, views, st);
  edgerun::JsonLine().str("type", "checkpoint").num("step", st.step).str("path", path).num("bytes", bytes).emit();
}

void write_weights(const std::string& dir, const std::vector<std::string>& names, const std::vector<ParamView>& views,
                   const std::vector<std::vector<int64_t>>& shapes) {
  ::mkdir(dir.c_str(), 0755);
  std::vector<std::string> files;
  for (size_t k = 0; k < names.size(); ++k) {
    std::string file = safe_name(names[k]) + ".npy";
    std::string why;
    if (!write_npy(dir + "/" + file, ScalarType::Float, shapes[k], views[k].data, views[k].n * sizeof(float), &why))
      fail("output", kExitOutput, Error::AccessFailed, "--weights-out: " + why);
    files.push_back(file);
  }
  edgerun::JsonLine().str("type", "weights").str("dir", dir).raw("names", json_string_array(names))
      .raw("files", json_string_array(files)).emit();
}

}  // namespace

int64_t run_mezo(Module& module, const std::string& method, const TrainOptions& o, uint64_t seed);

int64_t run_train(Module& module, const std::string& method, const TrainOptions& o, uint64_t seed) {
  if (o.algorithm == "mezo") return run_mezo(module, method, o, seed);
  Layout l = read_layout(module, method);
  Split train = load_split(o.data, o.labels, "--data");
  check_split(train, l, "--data");
  Split eval;
  const bool has_eval = !o.eval_data.empty();
  if (has_eval) {
    eval = load_split(o.eval_data, o.eval_labels, "--eval-data");
    check_split(eval, l, "--eval-data");
  }
  Trainer t(module, method, l, o, seed);
  const int64_t B = l.batch, per_epoch = train.n / B;

  // The first forward binds the parameter outputs; a resumed run then overwrites them.
  std::vector<int64_t> first = epoch_order(train.n, seed, 0, false);
  t.run(train, first.data());
  t.check_params();
  int64_t trainable = 0;
  for (int64_t k = 0; k < l.count; ++k) trainable += static_cast<int64_t>(t.numel(k));
  State st;
  std::vector<ParamView> views;
  for (int64_t k = 0; k < l.count; ++k) views.push_back({t.param(k), t.numel(k)});
  if (!o.resume.empty()) load_checkpoint(o.resume, views, &st);
  const bool adam = o.optimizer == "adamw";
  if (adam || o.momentum > 0) {
    if (st.m.empty())
      for (int64_t k = 0; k < l.count; ++k) st.m.emplace_back(t.numel(k), 0.0f);
    if (adam && st.v.empty())
      for (int64_t k = 0; k < l.count; ++k) st.v.emplace_back(t.numel(k), 0.0f);
  }
  edgerun::JsonLine()
      .str("type", "train")
      .str("method", method)
      .num("parameters", l.count)
      .num("trainable", trainable)
      .num("trainable_bytes", trainable * 4)
      .num("optimizer_state_bytes", (adam ? 2 : (o.momentum > 0 ? 1 : 0)) * trainable * 4)
      .num("batch", B)
      .num("train_samples", train.n)
      .num("eval_samples", has_eval ? eval.n : 0)
      .num("steps", o.steps)
      .num("grad_accum", o.grad_accum)
      .str("optimizer", o.optimizer)
      .dbl("lr", o.lr)
      .str("schedule", o.schedule)
      .num("seed", static_cast<int64_t>(seed))
      .num("start_step", st.step)
      .raw("names", json_string_array(l.names))
      .emit();

  auto evaluate = [&](const char* when) {
    if (!has_eval) return;
    std::vector<int64_t> order = epoch_order(eval.n, seed, 0, false);
    double loss = 0;
    int64_t correct = 0, seen = 0, exec = 0;
    bool scored = true;
    for (int64_t b = 0; b + B <= eval.n; b += B) {
      auto r = t.run(eval, order.data() + b);
      loss += r.loss * B;
      exec += r.execute_ns;
      scored = scored && r.correct >= 0;
      correct += std::max<int64_t>(0, r.correct);
      seen += B;
    }
    emit_eval(when, st.step, seen, loss, correct, scored, exec, seen * eval.label_elems);
  };

  evaluate("before");
  std::vector<std::vector<float>> acc(static_cast<size_t>(l.count));
  for (int64_t k = 0; k < l.count; ++k) acc[static_cast<size_t>(k)].assign(t.numel(k), 0.0f);
  std::vector<int64_t> order;
  int64_t order_epoch = -1, ran = 0;
  double loss_window = 0;
  int64_t window_steps = 0, window_exec = 0;
  auto w0 = Clock::now();
  const int64_t last = o.stop_at > 0 ? std::min(o.stop_at, o.steps) : o.steps;
  while (st.step < last) {
    double step_loss = 0;
    int64_t step_exec = 0;
    for (int64_t a = 0; a < o.grad_accum; ++a) {
      const int64_t epoch = st.batches / per_epoch, k = st.batches % per_epoch;
      if (epoch != order_epoch) {
        order = epoch_order(train.n, seed, epoch, o.shuffle);
        order_epoch = epoch;
      }
      auto r = t.run(train, order.data() + k * B);
      ++st.batches;
      step_loss += r.loss;
      step_exec += r.execute_ns;
      for (int64_t p = 0; p < l.count; ++p) {
        const float* g = t.grad(p);
        auto& dst = acc[static_cast<size_t>(p)];
        if (a == 0) std::copy(g, g + dst.size(), dst.begin());
        else for (size_t i = 0; i < dst.size(); ++i) dst[i] += g[i];
      }
    }
    const double lr = lr_at(o, st.step);
    const float inv = 1.0f / static_cast<float>(o.grad_accum);
    const double b1t = 1.0 - std::pow(o.beta1, static_cast<double>(st.step + 1));
    const double b2t = 1.0 - std::pow(o.beta2, static_cast<double>(st.step + 1));
    for (int64_t p = 0; p < l.count; ++p) {
      float* w = t.param(p);
      auto& g = acc[static_cast<size_t>(p)];
      const size_t n = g.size();
      if (adam) {
        auto& m = st.m[static_cast<size_t>(p)];
        auto& v = st.v[static_cast<size_t>(p)];
        for (size_t i = 0; i < n; ++i) {
          const double gi = g[i] * inv;
          m[i] = static_cast<float>(o.beta1 * m[i] + (1 - o.beta1) * gi);
          v[i] = static_cast<float>(o.beta2 * v[i] + (1 - o.beta2) * gi * gi);
          const double upd = (m[i] / b1t) / (std::sqrt(v[i] / b2t) + o.eps) + o.weight_decay * w[i];
          w[i] = static_cast<float>(w[i] - lr * upd);
        }
      } else {
        for (size_t i = 0; i < n; ++i) {
          double gi = g[i] * inv + o.weight_decay * w[i];
          if (o.momentum > 0) {
            auto& m = st.m[static_cast<size_t>(p)];
            m[i] = static_cast<float>(o.momentum * m[i] + gi);
            gi = m[i];
          }
          w[i] = static_cast<float>(w[i] - lr * gi);
        }
      }
    }
    ++st.step;
    ++ran;
    const double mean_loss = step_loss / o.grad_accum;
    if (!std::isfinite(mean_loss))
      fail("execute", kExitExecute, Error::Internal,
           "the loss became " + std::to_string(mean_loss) + " at step " + std::to_string(st.step) +
               " (diverged): lower --lr");
    loss_window += mean_loss;
    window_exec += step_exec;
    ++window_steps;
    if (st.step % o.log_every == 0 || st.step == last) {
      edgerun::JsonLine()
          .str("type", "step")
          .num("step", st.step)
          .dbl("loss", mean_loss)
          .dbl("loss_mean", loss_window / window_steps)
          .dbl("lr", lr)
          .num("batches", st.batches)
          .num("execute_ns", window_exec)
          .num("wall_ns", ns_between(w0, Clock::now()))
          .num("steps_in_line", window_steps)
          .emit();
      loss_window = 0;
      window_exec = 0;
      window_steps = 0;
      w0 = Clock::now();
    }
    if (o.eval_every > 0 && st.step % o.eval_every == 0 && st.step != last) evaluate("during");
    if (!o.checkpoint.empty() && o.checkpoint_every > 0 && st.step % o.checkpoint_every == 0) {
      checkpoint_now(o.checkpoint, views, st);
    }
  }
  evaluate("after");
  if (!o.checkpoint.empty() && !(o.checkpoint_every > 0 && st.step % o.checkpoint_every == 0 && ran > 0)) {
    checkpoint_now(o.checkpoint, views, st);
  }
  if (!o.weights_out.empty()) {
    std::vector<std::vector<int64_t>> shapes;
    for (int64_t k = 0; k < l.count; ++k) shapes.push_back(t.shape(k));
    write_weights(o.weights_out, l.names, views, shapes);
  }
  return ran;
}


// ---- MeZO: zeroth-order SGD on the inference-only program forward(x, y, *weights) -> (loss, pred).
// The weights live in the runner's buffers; each step perturbs them by +-eps*z with z ~ N(0, 1) drawn
// from a seed (never stored: regenerated for every pass), so memory is the inference's plus the weights.
namespace {

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

}  // namespace

int64_t run_mezo(Module& module, const std::string& method, const TrainOptions& o, uint64_t seed) {
  const std::string fqn_method = "__edgerun_mezo_fqn_" + method;
  auto have = module.method_names();
  if (!have.ok() || !have->count(fqn_method))
    fail("load", kExitLoad, Error::InvalidProgram,
         "--method mezo needs a MeZO program (forward(x, y, *weights) with a " + fqn_method +
             " method, as edgerun finetune --method mezo exports it)");
  auto fq = module.execute(fqn_method);
  if (!fq.ok()) fail("load", kExitLoad, fq.error(), "cannot read the MeZO program's weight names");
  std::vector<std::string> names;
  for (const auto& v : *fq)
    if (v.isString()) names.emplace_back(v.toString());
  auto meta = module.method_meta(method);
  if (!meta.ok()) fail("load", kExitLoad, meta.error(), "cannot read metadata of method " + method);
  const size_t n = names.size();
  if (meta->num_inputs() != 2 + n || meta->num_outputs() < 1)
    fail("input", kExitInput, Error::InvalidArgument,
         "the MeZO program takes " + std::to_string(meta->num_inputs()) + " inputs; expected x, y and " +
             std::to_string(n) + " weights");
  Layout l;
  auto x = meta->input_tensor_meta(0);
  auto y = meta->input_tensor_meta(1);
  if (!x.ok() || !y.ok() || y->scalar_type() != ScalarType::Long)
    fail("input", kExitInput, Error::InvalidArgument, "the MeZO program's x/y inputs are not tensors x, y [B] int64");
  std::vector<int64_t> xs(x->sizes().begin(), x->sizes().end());
  l.batch = xs[0];
  l.sample_shape.assign(xs.begin() + 1, xs.end());
  l.x_dtype = x->scalar_type();
  if (o.weights_in.empty())
    fail("usage", kExitUsage, Error::InvalidArgument, "--method mezo needs --weights-in DIR (the starting weights)");
  std::vector<std::vector<float>> w(n);
  std::vector<std::vector<executorch::aten::SizesType>> wshape(n);
  int64_t trainable = 0;
  for (size_t k = 0; k < n; ++k) {
    auto info = meta->input_tensor_meta(2 + k);
    if (!info.ok() || info->scalar_type() != ScalarType::Float)
      fail("input", kExitInput, Error::InvalidArgument, "weight input " + names[k] + " is not a float32 tensor");
    std::vector<int64_t> want(info->sizes().begin(), info->sizes().end());
    const std::string path = o.weights_in + "/" + safe_name(names[k]) + ".npy";
    std::vector<uint8_t> bytes;
    std::string why;
    NpyArray arr;
    if (!read_file(path, &bytes, &why) || !parse_npy(bytes, &arr, &why))
      fail("input", kExitInput, Error::AccessFailed, "--weights-in: " + path + ": " + why);
    if (arr.dtype != ScalarType::Float || arr.shape != want)
      fail("input", kExitInput, Error::InvalidArgument,
           "--weights-in: " + path + " is " + dtype_text(arr.dtype) + " " + shape_text(arr.shape) +
               "; the program takes float32 " + shape_text(want));
    w[k].resize(arr.data.size() / sizeof(float));
    std::memcpy(w[k].data(), arr.data.data(), arr.data.size());
    wshape[k].assign(want.begin(), want.end());
    trainable += static_cast<int64_t>(w[k].size());
  }
  Split train = load_split(o.data, o.labels, "--data");
  check_split(train, l, "--data");
  Split eval;
  const bool has_eval = !o.eval_data.empty();
  if (has_eval) {
    eval = load_split(o.eval_data, o.eval_labels, "--eval-data");
    check_split(eval, l, "--eval-data");
  }
  const int64_t B = l.batch, per_epoch = train.n / B;
  std::vector<uint8_t> xbuf(train.sample_bytes * static_cast<size_t>(B));
  std::vector<int64_t> ybuf(static_cast<size_t>(B));
  std::vector<EValue> out;
  auto forward = [&](const Split& s, const int64_t* idx, int64_t* correct, int64_t* exec_ns) -> double {
    const auto* labels = reinterpret_cast<const int64_t*>(s.y.data.data());
    for (int64_t i = 0; i < B; ++i) {
      std::memcpy(xbuf.data() + i * s.sample_bytes, s.x.data.data() + idx[i] * s.sample_bytes, s.sample_bytes);
      ybuf[static_cast<size_t>(i)] = labels[idx[i]];
    }
    std::vector<executorch::aten::SizesType> xsz = {static_cast<executorch::aten::SizesType>(B)};
    for (int64_t d : l.sample_shape) xsz.push_back(static_cast<executorch::aten::SizesType>(d));
    // the tensors must outlive set_inputs/execute: an EValue only points at its TensorImpl
    std::vector<executorch::extension::TensorPtr> keep;
    keep.push_back(executorch::extension::from_blob(xbuf.data(), xsz, l.x_dtype));
    keep.push_back(executorch::extension::from_blob(ybuf.data(), {static_cast<executorch::aten::SizesType>(B)},
                                                    ScalarType::Long));
    for (size_t k = 0; k < n; ++k) keep.push_back(executorch::extension::from_blob(w[k].data(), wshape[k]));
    std::vector<EValue> in;
    for (auto& t : keep) in.emplace_back(t);
    Error e = module.set_inputs(method, in);
    if (e != Error::Ok) fail("input", kExitInput, e, "set_inputs(" + method + ") failed with " + error_name(e));
    auto t0 = Clock::now();
    auto res = module.execute(method);
    if (exec_ns) *exec_ns += ns_between(t0, Clock::now());
    if (!res.ok()) fail("execute", kExitExecute, res.error(), "the MeZO forward failed with " + error_name(res.error()));
    out = std::move(*res);
    if (correct && out.size() > 1 && out[1].isTensor()) {
      int64_t c = Trainer::count_correct(out[1].toTensor(), ybuf.data(), B);
      *correct = c;
    }
    return out[0].toTensor().const_data_ptr<float>()[0];
  };
  State st;
  std::vector<ParamView> views;
  for (auto& t : w) views.push_back({t.data(), t.size()});
  if (!o.resume.empty()) load_checkpoint(o.resume, views, &st);
  edgerun::JsonLine()
      .str("type", "train")
      .str("method", method)
      .str("algorithm", "mezo")
      .num("parameters", static_cast<int64_t>(n))
      .num("trainable", trainable)
      .num("trainable_bytes", trainable * 4)
      .num("optimizer_state_bytes", 0)
      .num("batch", B)
      .num("train_samples", train.n)
      .num("eval_samples", has_eval ? eval.n : 0)
      .num("steps", o.steps)
      .num("grad_accum", 1)
      .str("optimizer", "mezo-sgd")
      .dbl("lr", o.lr)
      .dbl("eps", o.mezo_eps)
      .str("schedule", o.schedule)
      .num("seed", static_cast<int64_t>(seed))
      .num("start_step", st.step)
      .raw("names", json_string_array(names))
      .emit();
  auto evaluate = [&](const char* when) {
    if (!has_eval) return;
    std::vector<int64_t> order = epoch_order(eval.n, seed, 0, false);
    double loss = 0;
    int64_t correct = 0, seen = 0, exec = 0;
    bool scored = true;
    for (int64_t b = 0; b + B <= eval.n; b += B) {
      int64_t c = -1;
      loss += forward(eval, order.data() + b, &c, &exec) * B;
      scored = scored && c >= 0;
      correct += std::max<int64_t>(0, c);
      seen += B;
    }
    emit_eval(when, st.step, seen, loss, correct, scored, exec);
  };
  evaluate("before");
  const int64_t last = o.stop_at > 0 ? std::min(o.stop_at, o.steps) : o.steps;
  std::vector<int64_t> order;
  int64_t order_epoch = -1, ran = 0, window_exec = 0, window_steps = 0;
  double loss_window = 0;
  auto w0 = Clock::now();
  while (st.step < last) {
    const int64_t epoch = st.batches / per_epoch, k = st.batches % per_epoch;
    if (epoch != order_epoch) {
      order = epoch_order(train.n, seed, epoch, o.shuffle);
      order_epoch = epoch;
    }
    const int64_t* idx = order.data() + k * B;
    ++st.batches;
    const uint64_t z_seed = seed * 0xD1B54A32D192ED03ULL + static_cast<uint64_t>(st.step) + 7;
    const double eps = o.mezo_eps, lr = lr_at(o, st.step);
    int64_t exec = 0;
    perturb(w, z_seed, eps);
    const double lp = forward(train, idx, nullptr, &exec);
    perturb(w, z_seed, -2 * eps);
    const double lm = forward(train, idx, nullptr, &exec);
    const double g = (lp - lm) / (2 * eps);
    if (!std::isfinite(g))
      fail("execute", kExitExecute, Error::Internal,
           "the MeZO projected gradient became " + std::to_string(g) + " at step " + std::to_string(st.step + 1) +
               " (diverged): lower --lr or --mezo-eps");
    perturb(w, z_seed, eps - lr * g, lr * o.weight_decay);  // back to w, then the update along z
    ++st.step;
    ++ran;
    const double loss = 0.5 * (lp + lm);
    loss_window += loss;
    window_exec += exec;
    ++window_steps;
    if (st.step % o.log_every == 0 || st.step == last) {
      edgerun::JsonLine()
          .str("type", "step")
          .num("step", st.step)
          .dbl("loss", loss)
          .dbl("loss_mean", loss_window / window_steps)
          .dbl("projected_grad", g)
          .dbl("lr", lr)
          .num("batches", st.batches)
          .num("execute_ns", window_exec)
          .num("wall_ns", ns_between(w0, Clock::now()))
          .num("steps_in_line", window_steps)
          .emit();
      loss_window = 0;
      window_exec = 0;
      window_steps = 0;
      w0 = Clock::now();
    }
    if (o.eval_every > 0 && st.step % o.eval_every == 0 && st.step != last) evaluate("during");
    if (!o.checkpoint.empty() && o.checkpoint_every > 0 && st.step % o.checkpoint_every == 0) {
      checkpoint_now(o.checkpoint, views, st);
    }
  }
  evaluate("after");
  if (!o.checkpoint.empty() && !(o.checkpoint_every > 0 && st.step % o.checkpoint_every == 0 && ran > 0)) {
    checkpoint_now(o.checkpoint, views, st);
  }
  if (!o.weights_out.empty()) {
    std::vector<std::vector<int64_t>> shapes;
    for (const auto& s : wshape) shapes.emplace_back(s.begin(), s.end());
    write_weights(o.weights_out, names, views, shapes);
  }
  return ran;
}

// ---- The mode: --train and its flags.
namespace {

class TrainMode : public Mode {
 public:
  std::string usage() const override {
    return "edgerun-runner --model TRAIN.pte --train --data X.npy --labels Y.npy [--eval-data X.npy\n"
           "         --eval-labels Y.npy] [--steps N] [--lr LR] [--optimizer sgd|adamw] [--momentum M]\n"
           "         [--weight-decay WD] [--grad-accum K] [--lr-schedule constant|cosine] [--warmup-steps W]\n"
           "         [--log-every K] [--eval-every E] [--checkpoint PATH [--checkpoint-every K]] [--resume PATH]\n"
           "         [--weights-out DIR] [--no-shuffle] [--stop-at STEP] [--seed N] [--threads T]\n"
           "         [--mezo --weights-in DIR [--mezo-eps E]]  (zeroth-order: a weights-as-inputs forward program)\n";
  }

  bool parse_flag(Args& a, std::string* problem) override {
    const std::string& f = a.flag();
    if (f == "--train") {
      o_.enabled = true;
    } else if (f == "--mezo") {
      o_.algorithm = "mezo";
    } else if (f == "--mezo-eps") {
      std::string v;
      if (!a.value(&v) || !parse_double(v, 1e-12, 1.0, &o_.mezo_eps))
        *problem = "--mezo-eps needs a number in (0, 1], got '" + v + "'";
    } else if (f == "--weights-in") {
      if (!a.value(&o_.weights_in) || o_.weights_in.empty()) *problem = "--weights-in needs a directory";
    } else if (f == "--no-shuffle") {
      o_.shuffle = false;
    } else if (f == "--lr") {
      *problem = a.double_value(1e-12, 1e6, "a number in (0, 1e6]", &o_.lr);
    } else if (f == "--momentum") {
      *problem = a.double_value(0.0, 0.999999, "a number in [0, 1)", &o_.momentum);
    } else if (f == "--weight-decay") {
      *problem = a.double_value(0.0, 1e6, "a number in [0, 1e6]", &o_.weight_decay);
    } else if (f == "--optimizer") {
      *problem = a.choice_value({"sgd", "adamw"}, "sgd or adamw", &o_.optimizer);
    } else if (f == "--lr-schedule") {
      *problem = a.choice_value({"constant", "cosine"}, "constant or cosine", &o_.schedule);
    } else {
      return parse_path_or_count(a, problem);
    }
    return true;
  }

  bool chosen() const override { return o_.enabled; }

  std::string check_unchosen() const override {
    if (!o_.data.empty() || !o_.labels.empty() || !o_.eval_data.empty() || !o_.eval_labels.empty() ||
        !o_.checkpoint.empty() || !o_.resume.empty() || !o_.weights_out.empty())
      return "--data, --labels, --eval-*, --checkpoint, --resume and --weights-out need --train";
    return "";
  }

  std::string check_chosen(CommonOptions& c, bool others_data) override {
    if (others_data || !c.etdump.empty())
      return "--train takes its data from --data/--labels; --llm, --input, --input-batch, --output-dir and --etdump "
             "do not apply";
    if (o_.data.empty() || o_.labels.empty()) return "--train needs --data X.npy and --labels Y.npy";
    if (o_.eval_data.empty() != o_.eval_labels.empty()) return "--eval-data and --eval-labels go together";
    if (o_.checkpoint_every > 0 && o_.checkpoint.empty()) return "--checkpoint-every needs --checkpoint PATH";
    return "";
  }

  Summary run(Loaded& ld) override {
    ld.emit_load(describe_tensors(ld.meta, true, "train"));
    auto l0 = Clock::now();
    Summary s;
    s.mode = "train";
    s.iterations = run_train(ld.module, ld.common.method, o_, ld.common.seed);
    s.timed_total_ns = ns_between(l0, Clock::now());
    return s;
  }

 private:
  bool parse_path_or_count(Args& a, std::string* problem) {
    for (const auto& p : kPathFlags)
      if (a.flag() == p.flag) {
        *problem = a.path_value(&(o_.*p.field));
        return true;
      }
    for (const auto& c : kCountFlags)
      if (a.flag() == c.flag) {
        *problem = a.int_value(c.lo, &(o_.*c.field));
        return true;
      }
    return false;
  }

  struct PathFlag {
    const char* flag;
    std::string TrainOptions::*field;
  };
  static constexpr PathFlag kPathFlags[] = {
      {"--data", &TrainOptions::data},           {"--labels", &TrainOptions::labels},
      {"--eval-data", &TrainOptions::eval_data}, {"--eval-labels", &TrainOptions::eval_labels},
      {"--checkpoint", &TrainOptions::checkpoint}, {"--resume", &TrainOptions::resume},
      {"--weights-out", &TrainOptions::weights_out}};
  struct CountFlag {
    const char* flag;
    int64_t TrainOptions::*field;
    int64_t lo;
  };
  static constexpr CountFlag kCountFlags[] = {
      {"--steps", &TrainOptions::steps, 1},           {"--stop-at", &TrainOptions::stop_at, 1},
      {"--grad-accum", &TrainOptions::grad_accum, 1}, {"--log-every", &TrainOptions::log_every, 1},
      {"--eval-every", &TrainOptions::eval_every, 0}, {"--checkpoint-every", &TrainOptions::checkpoint_every, 0},
      {"--warmup-steps", &TrainOptions::warmup_steps, 0}};

  TrainOptions o_;
};

}  // namespace

std::unique_ptr<Mode> make_train_mode() { return std::make_unique<TrainMode>(); }

}  // namespace edgerun
