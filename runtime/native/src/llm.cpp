// The runner's LLM mode (`--llm generate|score`): token-level work on a decoder program
// `forward(tokens [1,T] int64, input_pos [T] int64[, cache_positions [N] int64]) -> logits [1,T,vocab]`
// whose KV cache lives in the program's own mutable buffers and whose T is dynamic (1..max_context); a
// third input (programs since layout 3) is the valid prefix of the cache, 0..start+T-1, which attention
// reads instead of the whole max_context cache. Prefill + decode
// (greedy or sampled) and scoring (per-token log-probabilities for perplexity), with one JSON line
// per token. Protocol: PROTOCOL.md.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

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

struct LlmOptions {
  std::string mode;                 // "" (not an LLM run) | generate | score
  std::vector<int64_t> prompt;      // --prompt-ids / --tokens: the prompt (generate) or text (score)
  std::string tokens_source;        // where the ids came from, for the `llm` line
  std::string tokens_file;          // --tokens: read when the run starts
  int64_t random_prompt = 0;        // --random-prompt P: P ids uniform in [0, vocab) from --seed
  int64_t max_new_tokens = 32;
  std::vector<int64_t> stop_ids;    // --stop-id (repeatable): ids that end a generation
  bool ignore_stop = false;         // --ignore-stop: always generate max_new_tokens (benchmarks)
  double temperature = 0.0;         // 0: greedy (argmax)
  int64_t top_k = 0;                // 0: no top-k cut
  double top_p = 1.0;               // 1: no nucleus cut
  int64_t repeat = 1;               // timed repetitions of the whole prefill + decode
  int64_t window = 0;               // score: tokens per window (0: the method's max context)
  std::string logprobs_path;        // score: per-token log-probabilities as a float64 .npy
};

struct Shapes {
  int64_t max_context = 0;
  int64_t vocab = 0;
  bool prefix = false;  // the method takes cache_positions (attention over the valid prefix only)
};

// The decoder signature every LLM program edgerun exports has: true and *shapes, or false and *why (what
// this method takes instead). The run refuses such a method (check_signature), the --threads auto trial
// skips it.
bool read_signature(const executorch::runtime::MethodMeta& meta, Shapes* shapes, std::string* why) {
  const size_t inputs = meta.num_inputs();
  if ((inputs != 2 && inputs != 3) || meta.num_outputs() < 1) {
    *why = "this one takes " + std::to_string(inputs) + " input(s) and returns " +
           std::to_string(meta.num_outputs()) + " output(s)";
    return false;
  }
  auto tok = meta.input_tensor_meta(0);
  auto pos = meta.input_tensor_meta(1);
  auto out = meta.output_tensor_meta(0);
  auto cp = meta.input_tensor_meta(inputs - 1);  // cache_positions when there are 3
  if (!tok.ok() || !pos.ok() || !out.ok() || !cp.ok()) {
    *why = "its inputs or output 0 are not tensors";
    return false;
  }
  std::vector<int64_t> ts(tok->sizes().begin(), tok->sizes().end());
  std::vector<int64_t> ps(pos->sizes().begin(), pos->sizes().end());
  std::vector<int64_t> os(out->sizes().begin(), out->sizes().end());
  bool ok = tok->scalar_type() == ScalarType::Long && ts.size() == 2 && ts[0] == 1 &&
            pos->scalar_type() == ScalarType::Long && ps.size() == 1 && ps[0] == ts[1] &&
            out->scalar_type() == ScalarType::Float && os.size() == 3 && os[0] == 1 && os[1] == ts[1];
  std::string third;
  if (inputs == 3) {
    std::vector<int64_t> cs(cp->sizes().begin(), cp->sizes().end());
    // the cache's positions: as long as the cache (its upper bound), int64
    ok = ok && cp->scalar_type() == ScalarType::Long && cs.size() == 1 && cs[0] >= ts[1];
    third = ", " + dtype_text(cp->scalar_type()) + " " + shape_text(cs);
  }
  if (!ok) {
    *why = "this one takes " + dtype_text(tok->scalar_type()) + " " + shape_text(ts) + ", " +
           dtype_text(pos->scalar_type()) + " " + shape_text(ps) + third + " and returns " +
           dtype_text(out->scalar_type()) + " " + shape_text(os);
    return false;
  }
  *shapes = {ts[1], os[2], inputs == 3};
  return true;
}

Shapes check_signature(Module& module, const std::string& method) {
  auto meta = module.method_meta(method);
  if (!meta.ok()) fail("load", kExitLoad, meta.error(), "cannot read metadata of method " + method);
  Shapes shapes;
  std::string why;
  if (!read_signature(*meta, &shapes, &why))
    fail("input", kExitInput, Error::InvalidArgument,
         "--llm needs a method " + method +
             "(tokens [1,T] int64, input_pos [T] int64[, cache_positions [N] int64]) -> logits [1,T,vocab] "
             "float32; " + why);
  return shapes;
}

// The storage of one forward's inputs: the tensors point into these vectors, which must outlive execute.
struct ForwardInputs {
  std::vector<int64_t> tokens, positions, prefix;
  std::vector<executorch::extension::TensorPtr> tensors;

  // tokens[0..n) at positions start..start+n-1 and, for a program that takes it (`with_prefix`), the
  // cache's valid prefix 0..start+n-1 (which attention then reads alone)
  std::vector<EValue> make(const int64_t* ids, int64_t n, int64_t start, bool with_prefix) {
    using executorch::aten::SizesType;
    tokens.assign(ids, ids + n);
    positions.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = start + i;
    tensors.clear();
    tensors.push_back(executorch::extension::from_blob(tokens.data(), {1, static_cast<SizesType>(n)}, ScalarType::Long));
    tensors.push_back(executorch::extension::from_blob(positions.data(), {static_cast<SizesType>(n)}, ScalarType::Long));
    if (with_prefix) {
      const int64_t valid = start + n;
      for (int64_t i = static_cast<int64_t>(prefix.size()); i < valid; ++i) prefix.push_back(i);
      tensors.push_back(executorch::extension::from_blob(prefix.data(), {static_cast<SizesType>(valid)}, ScalarType::Long));
    }
    std::vector<EValue> values;
    for (auto& t : tensors) values.emplace_back(t);
    return values;
  }
};

class Decoder {
 public:
  Decoder(Module& module, std::string method, Shapes shapes)
      : module_(module), method_(std::move(method)), shapes_(shapes) {}

  struct Step {
    int64_t execute_ns = 0;
    int64_t wall_ns = 0;
    const float* logits = nullptr;  // [n, vocab], valid until the next step
  };

  // Runs tokens[0..n) at positions start..start+n-1; the program writes them into its KV cache.
  Step run(const int64_t* tokens, int64_t n, int64_t start, const std::string& what) {
    Step s;
    auto w0 = Clock::now();
    std::vector<EValue> values = inputs_.make(tokens, n, start, shapes_.prefix);
    Error e = module_.set_inputs(method_, values);
    if (e != Error::Ok)
      fail("input", kExitInput, e,
           "set_inputs(" + method_ + ") with " + std::to_string(n) + " token(s) failed with " + error_name(e) +
               " (" + what + "): the program must have been exported with a dynamic prompt length "
                             "(1.." + std::to_string(shapes_.max_context) + ")");
    auto e0 = Clock::now();
    auto res = module_.execute(method_);
    auto e1 = Clock::now();
    if (!res.ok())
      fail("execute", kExitExecute, res.error(),
           "execute(" + method_ + ") failed with " + error_name(res.error()) + " (" + what + ")");
    outputs_ = std::move(*res);
    if (outputs_.empty() || !outputs_[0].isTensor())
      fail("output", kExitOutput, Error::InvalidArgument, "output 0 of " + method_ + " is not a tensor (" + what + ")");
    const auto& t = outputs_[0].toTensor();
    if (t.dim() != 3 || t.size(1) != n || t.size(2) != shapes_.vocab || t.scalar_type() != ScalarType::Float)
      fail("output", kExitOutput, Error::InvalidArgument,
           "output 0 of " + method_ + " is " + dtype_text(t.scalar_type()) + " " +
               shape_text(std::vector<int64_t>(t.sizes().begin(), t.sizes().end())) + " for " + std::to_string(n) +
               " token(s); expected float32 [1," + std::to_string(n) + "," + std::to_string(shapes_.vocab) + "] (" +
               what + ")");
    s.logits = t.const_data_ptr<float>();
    s.execute_ns = ns_between(e0, e1);
    s.wall_ns = ns_between(w0, Clock::now());
    return s;
  }

 private:
  Module& module_;
  std::string method_;
  Shapes shapes_;
  ForwardInputs inputs_;
  std::vector<EValue> outputs_;
};

class Sampler {
 public:
  Sampler(const LlmOptions& o, int64_t vocab, uint64_t seed) : o_(o), vocab_(vocab), rng_(seed) {}

  int64_t next(const float* row) {
    if (o_.temperature <= 0.0 || o_.top_k == 1) return argmax(row);
    cand_.clear();
    for (int64_t i = 0; i < vocab_; ++i) cand_.emplace_back(row[i] / o_.temperature, i);
    auto by_logit = [](const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;  // ties: lower id first
    };
    if (o_.top_k > 0 && o_.top_k < vocab_) {
      std::partial_sort(cand_.begin(), cand_.begin() + o_.top_k, cand_.end(), by_logit);
      cand_.resize(static_cast<size_t>(o_.top_k));
    } else {
      std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    const double top = cand_.front().first;
    double total = 0;
    for (auto& c : cand_) total += (c.first = std::exp(c.first - top));
    size_t keep = cand_.size();
    if (o_.top_p < 1.0) {  // the smallest prefix whose probability reaches top_p (at least one)
      double cum = 0;
      for (size_t i = 0; i < cand_.size(); ++i) {
        cum += cand_[i].first / total;
        if (cum >= o_.top_p) {
          keep = i + 1;
          break;
        }
      }
      total = 0;
      for (size_t i = 0; i < keep; ++i) total += cand_[i].first;
    }
    double u = unit_draw(&rng_) * total;
    for (size_t i = 0; i < keep; ++i) {
      u -= cand_[i].first;
      if (u < 0) return cand_[i].second;
    }
    return cand_[keep - 1].second;
  }

  int64_t argmax(const float* row) const {
    return static_cast<int64_t>(std::max_element(row, row + vocab_) - row);  // first of equal maxima
  }

 private:
  const LlmOptions& o_;
  int64_t vocab_;
  std::mt19937_64 rng_;
  std::vector<std::pair<double, int64_t>> cand_;
};

double per_second(int64_t count, int64_t ns) { return ns > 0 ? static_cast<double>(count) * 1e9 / ns : NAN; }

void check_ids(const std::vector<int64_t>& ids, int64_t vocab, const std::string& what) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      fail("input", kExitInput, Error::InvalidArgument,
           what + ": token " + std::to_string(i) + " is id " + std::to_string(ids[i]) +
               ", outside the program's vocabulary 0.." + std::to_string(vocab - 1));
}

void generate_once(Decoder& dec, Sampler& sampler, const LlmOptions& o, const std::vector<int64_t>& prompt,
                   const Shapes& shapes, int64_t repeat, bool warmup) {
  const int64_t P = static_cast<int64_t>(prompt.size());
  auto t0 = Clock::now();
  Decoder::Step pre = dec.run(prompt.data(), P, 0, "prefill of " + std::to_string(P) + " token(s)");
  edgerun::JsonLine()
      .str("type", "prefill")
      .num("repeat", repeat)
      .boolean("warmup", warmup)
      .num("tokens", P)
      .num("execute_ns", pre.execute_ns)
      .num("wall_ns", pre.wall_ns)
      .emit();
  std::vector<int64_t> ids;
  int64_t tok = sampler.next(pre.logits + (P - 1) * shapes.vocab);
  ids.push_back(tok);
  const int64_t ttft_ns = ns_between(t0, Clock::now());
  auto token_line = [&](int64_t index, int64_t id, const char* source, int64_t exec_ns, int64_t wall_ns) {
    edgerun::JsonLine()
        .str("type", "token")
        .num("repeat", repeat)
        .boolean("warmup", warmup)
        .num("index", index)
        .num("id", id)
        .str("source", source)
        .num("execute_ns", exec_ns)
        .num("wall_ns", wall_ns)
        .num("t_ns", ns_between(t0, Clock::now()))
        .emit();
  };
  token_line(0, tok, "prefill", pre.execute_ns, ttft_ns);
  auto is_stop = [&](int64_t id) {
    return !o.ignore_stop && std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end();
  };
  std::string stop = "max_new_tokens";
  int64_t decode_exec = 0, decode_wall = 0, forwards = 0;
  while (true) {
    if (is_stop(tok)) {
      stop = "stop_id";
      break;
    }
    if (static_cast<int64_t>(ids.size()) >= o.max_new_tokens) break;
    const int64_t pos = P + static_cast<int64_t>(ids.size()) - 1;
    if (pos >= shapes.max_context) {
      stop = "context";
      break;
    }
    auto s0 = Clock::now();
    Decoder::Step st = dec.run(&tok, 1, pos, "decode step " + std::to_string(forwards) + " at position " +
                                                 std::to_string(pos));
    tok = sampler.next(st.logits);
    int64_t wall = ns_between(s0, Clock::now());
    decode_exec += st.execute_ns;
    decode_wall += wall;
    ++forwards;
    token_line(static_cast<int64_t>(ids.size()), tok, "decode", st.execute_ns, wall);
    ids.push_back(tok);
  }
  edgerun::JsonLine()
      .str("type", "generation")
      .num("repeat", repeat)
      .boolean("warmup", warmup)
      .num("prompt_tokens", P)
      .num("new_tokens", static_cast<int64_t>(ids.size()))
      .num("decode_forwards", forwards)
      .str("stop", stop)
      .num("ttft_ns", ttft_ns)
      .num("prefill_ns", pre.execute_ns)
      .num("prefill_wall_ns", pre.wall_ns)
      .num("decode_ns", decode_exec)
      .num("decode_wall_ns", decode_wall)
      .num("total_ns", ns_between(t0, Clock::now()))
      .dbl("prefill_tokens_per_s", per_second(P, pre.execute_ns))
      .dbl("decode_tokens_per_s", per_second(forwards, decode_exec))
      .raw("ids", json_int_array(ids))
      .emit();
}

void score(Decoder& dec, const LlmOptions& o, const Shapes& shapes) {
  const auto& ids = o.prompt;
  const int64_t N = static_cast<int64_t>(ids.size());
  if (N < 2)
    fail("input", kExitInput, Error::InvalidArgument,
         "--llm score needs at least 2 token ids (" + o.tokens_source + " has " + std::to_string(N) + ")");
  const int64_t W = o.window > 0 ? o.window : shapes.max_context;
  if (W > shapes.max_context)
    fail("usage", kExitUsage, Error::InvalidArgument,
         "--window " + std::to_string(W) + " is larger than the program's max context " +
             std::to_string(shapes.max_context));
  std::vector<double> logprobs;
  logprobs.reserve(static_cast<size_t>(N));
  double nll_total = 0;
  int64_t exec_total = 0, windows = 0;
  auto p0 = Clock::now();
  for (int64_t start = 0; start < N - 1; start += W) {
    const int64_t n = std::min(W, N - 1 - start);
    Decoder::Step st = dec.run(ids.data() + start, n, 0, "score window " + std::to_string(windows));
    double nll = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float* row = st.logits + j * shapes.vocab;
      const float mx = *std::max_element(row, row + shapes.vocab);
      double sum = 0;
      for (int64_t v = 0; v < shapes.vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
      double lp = static_cast<double>(row[ids[static_cast<size_t>(start + j + 1)]]) - mx - std::log(sum);
      logprobs.push_back(lp);
      nll -= lp;
    }
    nll_total += nll;
    exec_total += st.execute_ns;
    edgerun::JsonLine()
        .str("type", "score")
        .num("window", windows)
        .num("start", start)
        .num("tokens", n)
        .dbl("nll", nll)
        .num("execute_ns", st.execute_ns)
        .num("wall_ns", st.wall_ns)
        .emit();
    ++windows;
  }
  const int64_t scored = static_cast<int64_t>(logprobs.size());
  std::string path_json = "null";
  if (!o.logprobs_path.empty()) {
    std::string why;
    if (!write_npy(o.logprobs_path, ScalarType::Double, {scored}, logprobs.data(), logprobs.size() * sizeof(double),
                   &why))
      fail("output", kExitOutput, Error::AccessFailed, "--logprobs: " + why);
    path_json = json_escape(o.logprobs_path);
  }
  edgerun::JsonLine()
      .str("type", "perplexity")
      .num("tokens", scored)
      .num("windows", windows)
      .num("window", W)
      .dbl("nll", nll_total)
      .dbl("perplexity", std::exp(nll_total / static_cast<double>(scored)))
      .num("execute_ns_total", exec_total)
      .num("wall_ns_total", ns_between(p0, Clock::now()))
      .dbl("tokens_per_s", per_second(scored, exec_total))
      .raw("logprobs", path_json)
      .emit();
}

// Parses "1,2,3" or whitespace/comma separated ids (a --tokens file); false + *why on a bad id.
bool parse_ids(const std::string& text, std::vector<int64_t>* out, std::string* why) {
  out->clear();
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ',' || std::isspace(static_cast<unsigned char>(text[i])))) ++i;
    if (i >= text.size()) break;
    size_t j = i;
    while (j < text.size() && text[j] != ',' && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    std::string word = text.substr(i, j - i);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(word.c_str(), &end, 10);
    if (errno != 0 || *end != '\0' || v < 0) {
      *why = "'" + word.substr(0, 40) + "' (item " + std::to_string(out->size()) + ") is not a token id (an integer >= 0)";
      return false;
    }
    out->push_back(v);
    i = j;
  }
  return true;
}

// Runs the LLM mode on an already loaded method and prints its lines; failures go through fail().
// warmup: untimed repetitions first (their lines say "warmup": true). seed: sampling and
// --random-prompt. after_warmup runs between the warm-up and the timed repetitions (the ETDump is
// reset there). Returns the number of timed repetitions run.
int64_t run_llm(Module& module, const std::string& method, const LlmOptions& o, int64_t warmup, uint64_t seed,
                const std::function<void()>& after_warmup) {
  const Shapes shapes = check_signature(module, method);
  std::vector<int64_t> prompt = o.prompt;
  std::string source = o.tokens_source;
  if (o.random_prompt > 0) {
    std::mt19937_64 rng(seed);
    prompt.resize(static_cast<size_t>(o.random_prompt));
    for (auto& id : prompt) id = static_cast<int64_t>(unit_draw(&rng) * static_cast<double>(shapes.vocab));
    source = "random:" + std::to_string(o.random_prompt);
  }
  check_ids(prompt, shapes.vocab, source);
  for (int64_t id : o.stop_ids) check_ids({id}, shapes.vocab, "--stop-id");
  if (o.mode == "generate") {
    if (prompt.empty())
      fail("input", kExitInput, Error::InvalidArgument,
           "--llm generate needs a prompt of at least one token id (--prompt-ids, --tokens or --random-prompt)");
    if (static_cast<int64_t>(prompt.size()) > shapes.max_context)
      fail("input", kExitInput, Error::InvalidArgument,
           "the prompt has " + std::to_string(prompt.size()) + " tokens; the program's max context is " +
               std::to_string(shapes.max_context) + " (export with a larger --max-context, or shorten the prompt)");
  }
  edgerun::JsonLine line;
  line.str("type", "llm")
      .str("mode", o.mode)
      .str("method", method)
      .num("max_context", shapes.max_context)
      .num("vocab", shapes.vocab)
      .boolean("cache_positions", shapes.prefix)
      .num("prompt_tokens", static_cast<int64_t>(prompt.size()))
      .str("tokens_source", source);
  if (o.mode == "generate") {
    line.num("max_new_tokens", o.max_new_tokens)
        .raw("stop_ids", json_int_array(o.stop_ids))
        .boolean("ignore_stop", o.ignore_stop)
        .dbl("temperature", o.temperature)
        .num("top_k", o.top_k)
        .dbl("top_p", o.top_p)
        .num("seed", static_cast<int64_t>(seed))
        .num("warmup", warmup)
        .num("repeat", o.repeat);
  } else {
    line.num("window", o.window > 0 ? o.window : shapes.max_context);
  }
  line.emit();

  Decoder dec(module, method, shapes);
  if (o.mode == "score") {
    LlmOptions scored = o;
    scored.prompt = prompt;
    scored.tokens_source = source;
    after_warmup();
    score(dec, scored, shapes);
    return 1;
  }
  // One sampler per repetition, all from the same seed: every repetition generates the same ids.
  for (int64_t r = 0; r < warmup; ++r) {
    Sampler sampler(o, shapes.vocab, seed);
    generate_once(dec, sampler, o, prompt, shapes, r, true);
  }
  after_warmup();
  for (int64_t r = 0; r < o.repeat; ++r) {
    Sampler sampler(o, shapes.vocab, seed);
    generate_once(dec, sampler, o, prompt, shapes, r, false);
  }
  return o.repeat;
}

// ---------------------------------------------------------------------------------------------
// --threads auto: a short decode trial.

// Decode is what a user of generate waits on, token by token, so the trial times decode steps:
// kTrialPrompt tokens prefilled, kTrialWarm untimed decode steps (the first runs after a prefill
// re-plan the dynamic shapes), then kTrialSteps timed ones. SmolLM2-135M decodes at ~18 ms a step
// on one Zen 3 core, so one pool's trial costs ~0.2 s beside its load.
constexpr int64_t kTrialPrompt = 4;
constexpr int64_t kTrialWarm = 2;
constexpr int64_t kTrialSteps = 8;

struct DecodeTrial {
  int64_t prompt = 0;  // tokens prefilled
  int64_t steps = 0;   // decode steps timed
};

// The median execute time of one decode step in a fresh module with the current pool, or -1 when
// the program cannot be loaded or run here (the real run then says why). The fresh module has its
// own planned buffers, so the trial's KV cache is not the real run's: nothing of it reaches the
// real run's tokens (which, besides, overwrite the cache from position 0 with their prefill).
int64_t decode_trial_median_ns(const CommonOptions& c, DecodeTrial* trial) {
  std::unique_ptr<LazyPlannedMemory> planned;  // outlives m's method
  Module m(c.model, data_files(c), Module::LoadMode::Mmap);
  if (m.load() != Error::Ok || load_method_lazily(m, c.method, &planned) != Error::Ok) return -1;
  auto meta = m.method_meta(c.method);
  Shapes shapes;
  std::string why;
  if (!meta.ok() || !read_signature(*meta, &shapes, &why) || shapes.vocab < 1) return -1;
  const int64_t max_context = shapes.max_context;
  const int64_t vocab = shapes.vocab;
  // a short context still gets a trial: a shorter prompt, fewer steps
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(kTrialPrompt, max_context / 4));
  const int64_t total = std::min<int64_t>(kTrialWarm + kTrialSteps, max_context - P);
  if (total < 1) return -1;
  const int64_t warm = total > kTrialWarm ? kTrialWarm : 0;
  std::vector<int64_t> ns;
  ForwardInputs inputs;
  auto step = [&](int64_t n, int64_t start) -> bool {
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = (start + i) % vocab;
    std::vector<EValue> values = inputs.make(ids.data(), n, start, shapes.prefix);
    if (m.set_inputs(c.method, values) != Error::Ok) return false;
    auto t0 = Clock::now();
    bool ok = m.execute(c.method).ok();
    if (n == 1 && start >= P + warm) ns.push_back(ns_between(t0, Clock::now()));
    return ok;
  };
  if (!step(P, 0)) return -1;
  for (int64_t k = 0; k < total; ++k)
    if (!step(1, P + k)) return -1;
  trial->prompt = P;
  trial->steps = static_cast<int64_t>(ns.size());
  std::nth_element(ns.begin(), ns.begin() + ns.size() / 2, ns.end());
  return ns[ns.size() / 2];
}

std::string choose_decode_pool(const CommonOptions& c) {
  DecodeTrial trial;
  return choose_pool([&] { return decode_trial_median_ns(c, &trial); },
                     [&](JsonLine& j) {
                       j.str("measure", "decode").num("prompt_tokens", trial.prompt).num("decode_steps", trial.steps);
                     });
}

// ---------------------------------------------------------------------------------------------
// The mode.

class LlmMode : public Mode {
 public:
  std::string usage() const override {
    return "edgerun-runner --model PATH --llm generate (--prompt-ids 1,2,3 | --tokens FILE | --random-prompt P)\n"
           "         [--max-new-tokens N] [--stop-id ID]... [--ignore-stop] [--temperature T] [--top-k K]\n"
           "         [--top-p P] [--seed N] [--warmup W] [--repeat R] [--threads T|auto] [--etdump PATH]\n"
           "       edgerun-runner --model PATH --llm score (--prompt-ids ... | --tokens FILE) [--window W]\n"
           "         [--logprobs PATH.npy]\n";
  }

  bool parse_flag(Args& a, std::string* problem) override {
    const std::string& f = a.flag();
    if (f == "--llm") {
      *problem = a.choice_value({"generate", "score"}, "generate or score", &o_.mode);
    } else if (f == "--prompt-ids") {
      *problem = prompt_ids(a);
    } else if (f == "--tokens") {
      if (!a.value(&o_.tokens_file)) *problem = "--tokens needs a file of token ids";
    } else if (f == "--random-prompt") {
      *problem = a.int_value(1, &o_.random_prompt);
    } else if (f == "--max-new-tokens") {
      *problem = a.int_value(1, &o_.max_new_tokens);
    } else if (f == "--stop-id") {
      int64_t id = 0;
      *problem = a.int_value(0, &id);
      o_.stop_ids.push_back(id);
    } else if (f == "--ignore-stop") {
      o_.ignore_stop = true;
    } else if (f == "--temperature") {
      *problem = a.double_value(0.0, 1e6, "a number >= 0", &o_.temperature);
    } else if (f == "--top-p") {
      *problem = a.double_value(1e-9, 1.0, "a number in (0, 1]", &o_.top_p);
    } else if (f == "--top-k") {
      *problem = a.int_value(0, &o_.top_k);
    } else if (f == "--repeat") {
      *problem = a.int_value(1, &o_.repeat);
    } else if (f == "--window") {
      *problem = a.int_value(1, &o_.window);
    } else if (f == "--logprobs") {
      if (!a.value(&o_.logprobs_path)) *problem = "--logprobs needs a .npy path";
    } else {
      return false;
    }
    return true;
  }

  bool chosen() const override { return !o_.mode.empty(); }

  // The decode trial for generate and score alike (a score run's windows are prefills, which the
  // trial does not time: give --threads N to a score run whose speed matters).
  std::string choose_threads(const CommonOptions& c) override {
    return c.threads_auto ? choose_decode_pool(c) : "null";
  }

  std::string check_unchosen() const override {
    if (sources() || !o_.stop_ids.empty() || o_.ignore_stop || !o_.logprobs_path.empty() || o_.window)
      return "--prompt-ids, --tokens, --random-prompt, --stop-id, --ignore-stop, --window and --logprobs need "
             "--llm generate|score";
    return "";
  }

  std::string check_chosen(CommonOptions& c, bool others_data) override {
    if (others_data)
      return "--llm takes its tokens from --prompt-ids/--tokens/--random-prompt; --input, --input-batch and "
             "--output-dir do not apply";
    if (sources() > 1) return "give the tokens once: --prompt-ids, --tokens or --random-prompt";
    if (sources() == 0)
      return "--llm " + o_.mode + " needs token ids: --prompt-ids 1,2,3, --tokens FILE" +
             (o_.mode == "generate" ? " or --random-prompt P" : "");
    if (o_.mode == "score" && o_.random_prompt > 0)
      return "--llm score scores given text: --prompt-ids or --tokens, not --random-prompt";
    if (!c.warmup_given) c.warmup = 0;  // a generation is its own warm-up unit; ask for one
    return "";
  }

  Summary run(Loaded& ld) override {
    if (!o_.tokens_file.empty()) read_tokens_file();
    ld.emit_load(describe_tensors(ld.meta, true, "llm"));
    auto l0 = Clock::now();
    Summary s;
    s.mode = "llm-" + o_.mode;
    s.warmup = ld.common.warmup;
    s.iterations = run_llm(ld.module, ld.common.method, o_, ld.common.warmup, ld.common.seed, [&] {
      ld.reset_etdump();
      l0 = Clock::now();
    });
    s.timed_total_ns = ns_between(l0, Clock::now());
    return s;
  }

 private:
  std::string prompt_ids(Args& a) {
    std::string v, why;
    if (!a.value(&v)) return "--prompt-ids needs comma-separated token ids";
    if (!parse_ids(v, &o_.prompt, &why)) return "--prompt-ids: " + why;
    o_.tokens_source = "prompt-ids";
    return "";
  }

  int sources() const {
    return (o_.tokens_source == "prompt-ids") + !o_.tokens_file.empty() + (o_.random_prompt > 0);
  }

  void read_tokens_file() {
    std::vector<uint8_t> bytes;
    std::string why;
    if (!read_file(o_.tokens_file, &bytes, &why)) fail("input", kExitInput, Error::AccessFailed, "--tokens: " + why);
    if (!parse_ids(std::string(bytes.begin(), bytes.end()), &o_.prompt, &why))
      fail("input", kExitInput, Error::InvalidArgument, "--tokens " + o_.tokens_file + ": " + why);
    o_.tokens_source = "file:" + o_.tokens_file;
  }

  LlmOptions o_;
};

}  // namespace

std::unique_ptr<Mode> make_llm_mode() { return std::make_unique<LlmMode>(); }

}  // namespace edgerun
