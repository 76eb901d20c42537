// The runner's train mode: the one training loop, over a step rule (train.h) -- data batching and
// shuffle, a learning-rate schedule, evaluation on a held-out split, atomic checkpoints and
// --resume, --stop-at and --weights-out, all on the device.
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

#include "json_out.h"
#include "mode.h"

namespace edgerun {

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;

constexpr char kCheckpointMagic[8] = {'E', 'R', 'C', 'K', 'P', 'T', '0', '1'};

// ---------------------------------------------------------------------------------------------
// Data.

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

Split load_checked_split(const std::string& data, const std::string& labels, const Layout& l, const char* what) {
  Split s = load_split(data, labels, what);
  check_split(s, l, what);
  return s;
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

double lr_at(const TrainOptions& o, int64_t step) {  // step counts from 0
  if (o.warmup_steps > 0 && step < o.warmup_steps) return o.lr * static_cast<double>(step + 1) / o.warmup_steps;
  if (o.schedule == "cosine") {
    const double span = std::max<int64_t>(1, o.steps - o.warmup_steps);
    const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
    return o.lr * 0.5 * (1.0 + std::cos(M_PI * t));
  }
  return o.lr;
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: magic, step, batches, parameter count, m count, v count, then per parameter its
// size and floats, then the m and v buffers. Written to PATH.part, fsynced, renamed.

bool write_all(FILE* f, const void* p, size_t n) { return std::fwrite(p, 1, n, f) == n; }
bool read_all(FILE* f, void* p, size_t n) { return std::fread(p, 1, n, f) == n; }

int64_t save_checkpoint(const std::string& path, const std::vector<Param>& params, const State& st) {
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

void load_checkpoint(const std::string& path, const std::vector<Param>& params, State* st) {
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

void checkpoint_now(const std::string& path, const std::vector<Param>& params, const State& st) {
  int64_t bytes = save_checkpoint(path, params, st);
  JsonLine().str("type", "checkpoint").num("step", st.step).str("path", path).num("bytes", bytes).emit();
}

void write_weights(const std::string& dir, const std::vector<Param>& params) {
  ::mkdir(dir.c_str(), 0755);
  std::vector<std::string> names, files;
  for (const auto& p : params) {
    std::string file = safe_name(p.name) + ".npy";
    std::string why;
    if (!write_npy(dir + "/" + file, ScalarType::Float, p.shape, p.data, p.n * sizeof(float), &why))
      fail("output", kExitOutput, Error::AccessFailed, "--weights-out: " + why);
    names.push_back(p.name);
    files.push_back(file);
  }
  JsonLine().str("type", "weights").str("dir", dir).raw("names", json_string_array(names))
      .raw("files", json_string_array(files)).emit();
}

// ---------------------------------------------------------------------------------------------
// The loop.

class Loop {
 public:
  Loop(StepRule& rule, Module& module, const std::string& method, const TrainOptions& o, uint64_t seed)
      : rule_(rule), module_(module), method_(method), o_(o), seed_(seed) {}

  // Runs the session and prints its lines; returns the optimizer steps run in this invocation.
  int64_t run() {
    open();
    emit_train();
    evaluate("before");
    const int64_t last = o_.stop_at > 0 ? std::min(o_.stop_at, o_.steps) : o_.steps;
    Batches batches(train_, batch_, seed_, o_.shuffle, &st_);
    int64_t ran = 0;
    window_start_ = Clock::now();
    while (st_.step < last) {
      const double lr = lr_at(o_, st_.step);
      StepOutcome r = rule_.step(batches, lr, &st_);
      ++st_.step;
      ++ran;
      log_step(r, lr, st_.step % o_.log_every == 0 || st_.step == last);
      // a held-out evaluation or a checkpoint between steps is not a step's time: the window's wall
      // clock leaves it out
      const auto paused = Clock::now();
      if (o_.eval_every > 0 && st_.step % o_.eval_every == 0 && st_.step != last) evaluate("during");
      if (!o_.checkpoint.empty() && o_.checkpoint_every > 0 && st_.step % o_.checkpoint_every == 0)
        checkpoint_now(o_.checkpoint, params_, st_);
      window_paused_ += ns_between(paused, Clock::now());
    }
    evaluate("after");
    if (!o_.checkpoint.empty() && !(o_.checkpoint_every > 0 && st_.step % o_.checkpoint_every == 0 && ran > 0))
      checkpoint_now(o_.checkpoint, params_, st_);
    if (!o_.weights_out.empty()) write_weights(o_.weights_out, params_);
    return ran;
  }

 private:
  // The program (through the rule), the splits, the parameters, and the state of a --resume.
  void open() {
    const Layout l = rule_.open(module_, method_, seed_);
    batch_ = l.batch;
    train_ = load_checked_split(o_.data, o_.labels, l, "--data");
    if (has_eval()) eval_ = load_checked_split(o_.eval_data, o_.eval_labels, l, "--eval-data");
    params_ = rule_.bind(train_);
    if (!o_.resume.empty()) load_checkpoint(o_.resume, params_, &st_);
    rule_.init_state(&st_);
  }

  bool has_eval() const { return !o_.eval_data.empty(); }

  void emit_train() const {
    const RuleFacts f = rule_.facts();
    int64_t trainable = 0;
    std::vector<std::string> names;
    for (const auto& p : params_) {
      trainable += static_cast<int64_t>(p.n);
      names.push_back(p.name);
    }
    JsonLine line;
    line.str("type", "train").str("method", method_);
    if (!f.algorithm.empty()) line.str("algorithm", f.algorithm);
    line.num("parameters", static_cast<int64_t>(params_.size()))
        .num("trainable", trainable)
        .num("trainable_bytes", trainable * 4)
        .num("optimizer_state_bytes", f.state_copies * trainable * 4)
        .num("batch", batch_)
        .num("train_samples", train_.n)
        .num("eval_samples", has_eval() ? eval_.n : 0)
        .num("steps", o_.steps)
        .num("grad_accum", f.batches_per_step)
        .str("optimizer", f.optimizer)
        .dbl("lr", o_.lr);
    for (const auto& [key, value] : f.fields) line.dbl(key, value);
    for (const auto& [key, value] : f.texts) line.str(key, value);
    line.str("schedule", o_.schedule)
        .num("seed", static_cast<int64_t>(seed_))
        .num("start_step", st_.step)
        .raw("names", json_string_array(names))
        .emit();
  }

  // Every whole batch of the held-out split, in file order; one `eval` line.
  void evaluate(const char* when) {
    if (!has_eval()) return;
    std::vector<int64_t> order = epoch_order(eval_.n, seed_, 0, false);
    double loss = 0;
    int64_t correct = 0, seen = 0, exec = 0;
    bool scored = true;
    for (int64_t b = 0; b + batch_ <= eval_.n; b += batch_) {
      Scored r = rule_.score(eval_, order.data() + b);
      loss += r.loss * batch_;
      exec += r.execute_ns;
      scored = scored && r.correct >= 0;
      correct += std::max<int64_t>(0, r.correct);
      seen += batch_;
    }
    JsonLine line;
    line.str("type", "eval").str("when", when).num("step", st_.step).num("samples", seen).dbl("loss", loss / seen);
    if (scored) line.dbl("accuracy", static_cast<double>(correct) / (seen * eval_.label_elems));
    else line.null("accuracy");
    line.num("execute_ns", exec).emit();
  }

  // Adds the step to the window of the next `step` line; prints it when `print`.
  void log_step(const StepOutcome& r, double lr, bool print) {
    window_loss_ += r.loss;
    window_exec_ += r.execute_ns;
    ++window_steps_;
    if (!print) return;
    JsonLine line;
    line.str("type", "step").num("step", st_.step).dbl("loss", r.loss).dbl("loss_mean", window_loss_ / window_steps_);
    for (const auto& [key, value] : r.fields) line.dbl(key, value);
    line.dbl("lr", lr)
        .num("batches", st_.batches)
        .num("execute_ns", window_exec_)
        .num("wall_ns", ns_between(window_start_, Clock::now()) - window_paused_)
        .num("steps_in_line", window_steps_)
        .emit();
    window_loss_ = 0;
    window_exec_ = 0;
    window_steps_ = 0;
    window_paused_ = 0;
    window_start_ = Clock::now();
  }

  StepRule& rule_;
  Module& module_;
  const std::string& method_;
  const TrainOptions& o_;
  uint64_t seed_;
  int64_t batch_ = 0;
  Split train_, eval_;
  std::vector<Param> params_;
  State st_;
  double window_loss_ = 0;
  int64_t window_exec_ = 0, window_steps_ = 0, window_paused_ = 0;
  Clock::time_point window_start_;
};

// ---------------------------------------------------------------------------------------------
// The mode.

// The step rules, in the order they are chosen: the first one the command line chose runs, so the
// default (backprop, always chosen) is last.
using RuleFactory = std::unique_ptr<StepRule> (*)(const TrainOptions&);
constexpr RuleFactory kRules[] = {make_mezo_rule, make_backprop_rule};

class TrainMode : public Mode {
 public:
  TrainMode() {
    for (RuleFactory make : kRules) rules_.push_back(make(o_));
  }

  std::string usage() const override {
    std::string u =
        "edgerun-runner --model TRAIN.pte --train --data X.npy --labels Y.npy [--eval-data X.npy\n"
        "         --eval-labels Y.npy] [--steps N] [--lr LR] [--optimizer sgd|adamw] [--momentum M]\n"
        "         [--weight-decay WD] [--grad-accum K] [--lr-schedule constant|cosine] [--warmup-steps W]\n"
        "         [--log-every K] [--eval-every E] [--checkpoint PATH [--checkpoint-every K]] [--resume PATH]\n"
        "         [--weights-out DIR] [--no-shuffle] [--stop-at STEP] [--seed N] [--threads T]\n";
    for (const auto& r : rules_) u += r->usage();
    return u;
  }

  bool parse_flag(Args& a, std::string* problem) override {
    if (parse_own_flag(a, problem)) return true;
    for (auto& r : rules_)
      if (r->parse_flag(a, problem)) return true;
    return false;
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
    s.iterations = Loop(rule(), ld.module, ld.common.method, o_, ld.common.seed).run();
    s.timed_total_ns = ns_between(l0, Clock::now());
    return s;
  }

 private:
  bool parse_own_flag(Args& a, std::string* problem) {
    const std::string& f = a.flag();
    if (f == "--train") {
      o_.enabled = true;
    } else if (f == "--no-shuffle") {
      o_.shuffle = false;
    } else if (f == "--lr") {
      *problem = a.double_value(1e-12, 1e6, "a number in (0, 1e6]", &o_.lr);
    } else if (f == "--weight-decay") {
      *problem = a.double_value(0.0, 1e6, "a number in [0, 1e6]", &o_.weight_decay);
    } else if (f == "--lr-schedule") {
      *problem = a.choice_value({"constant", "cosine"}, "constant or cosine", &o_.schedule);
    } else {
      return parse_path_or_count(a, problem);
    }
    return true;
  }

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
      {"--log-every", &TrainOptions::log_every, 1},   {"--eval-every", &TrainOptions::eval_every, 0},
      {"--checkpoint-every", &TrainOptions::checkpoint_every, 0},
      {"--warmup-steps", &TrainOptions::warmup_steps, 0}};

  StepRule& rule() {
    for (auto& r : rules_)
      if (r->chosen()) return *r;
    return *rules_.back();
  }

  TrainOptions o_;
  std::vector<std::unique_ptr<StepRule>> rules_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Shared with the rules.

const int64_t* Batches::next() {
  const int64_t per_epoch = split_.n / batch_;
  const int64_t epoch = st_->batches / per_epoch, k = st_->batches % per_epoch;
  if (epoch != order_epoch_) {
    order_ = epoch_order(split_.n, seed_, epoch, shuffle_);
    order_epoch_ = epoch;
  }
  ++st_->batches;
  return order_.data() + k * batch_;
}

int64_t count_correct(const executorch::aten::Tensor& pred, const int64_t* labels, int64_t n) {
  int64_t correct = 0;
  if (pred.scalar_type() == ScalarType::Long && pred.numel() == n) {
    const int64_t* p = pred.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) correct += p[i] == labels[i];
  } else if (pred.scalar_type() == ScalarType::Float && pred.dim() >= 2 &&
             pred.numel() == n * pred.size(pred.dim() - 1)) {
    const float* p = pred.const_data_ptr<float>();
    const int64_t C = pred.size(pred.dim() - 1);
    for (int64_t i = 0; i < n; ++i) correct += (std::max_element(p + i * C, p + (i + 1) * C) - (p + i * C)) == labels[i];
  } else {
    return -1;
  }
  return correct;
}

std::string safe_name(const std::string& fqn) {
  std::string s;
  for (char c : fqn) s.push_back(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ? c : '_');
  return s.empty() || s[0] == '.' ? "_" + s : s;
}

std::unique_ptr<Mode> make_train_mode() { return std::make_unique<TrainMode>(); }

}  // namespace edgerun
