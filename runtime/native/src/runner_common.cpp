// The helpers every part of the runner uses (see runner_common.h).
#include "runner_common.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <utility>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include "json_out.h"
#include "npy.h"
#include "threadpool_api.h"

namespace edgerun {

namespace {

using executorch::runtime::Error;
using executorch::runtime::MethodMeta;
using executorch::runtime::Tag;

constexpr size_t kKeptLogLines = 20;

// ---------------------------------------------------------------------------------------------
// ExecuTorch's log: forwarded to stderr, error/fatal lines kept for the `error` record.

bool g_verbose = false;

std::deque<std::string>& kept_log() {
  static std::deque<std::string> lines;
  return lines;
}

void emit_log(et_timestamp_t /*timestamp*/, et_pal_log_level_t level, const char* filename,
              const char* /*function*/, size_t line, const char* message, size_t length) {
  const char* base = filename ? std::strrchr(filename, '/') : nullptr;
  base = base ? base + 1 : (filename ? filename : "?");
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  bool chatty = level == kInfo || level == kDebug;
  if (!chatty || g_verbose)
    std::fprintf(stderr, "%c executorch:%s:%zu] %s\n", static_cast<char>(level), base, line,
               text.c_str());
  if (level == kError || level == kFatal) {
    auto& lines = kept_log();
    lines.push_back(std::string(1, static_cast<char>(level)) + " " + base + ":" +
                    std::to_string(line) + "] " + text);
    if (lines.size() > kKeptLogLines) lines.pop_front();
  }
}

}  // namespace

void capture_executorch_log() {
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit_log, __FILE__));
}

void set_verbose_log(bool verbose) { g_verbose = verbose; }

std::string error_name(Error e) {
  std::string s = executorch::runtime::to_string(e);
  const std::string prefix = "Error::";
  if (s.compare(0, prefix.size(), prefix) == 0) s = s.substr(prefix.size());
  return s;
}

void fail(const char* stage, int exit_code, Error error, const std::string& message) {
  std::vector<std::string> log(kept_log().begin(), kept_log().end());
  edgerun::JsonLine()
      .str("type", "error")
      .str("stage", stage)
      .str("error", error_name(error))
      .num("code", static_cast<int64_t>(error))
      .str("message", message)
      .raw("log", edgerun::json_string_array(log))
      .emit();
  std::fflush(stdout);
  std::_Exit(exit_code);  // no static destructors: the ExecuTorch objects may be half-built
}

// ---------------------------------------------------------------------------------------------
// Text.

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string dtype_text(ScalarType t) {
  std::string n = edgerun::numpy_name(t);
  return n.empty() ? std::string(executorch::runtime::toString(t)) : n;
}

std::vector<int64_t> to_vec(executorch::runtime::Span<const int32_t> s) {
  return std::vector<int64_t>(s.begin(), s.end());
}

std::string describe_tensors(const MethodMeta& meta, bool inputs, const std::string& source) {
  std::string out = "[";
  size_t n = inputs ? meta.num_inputs() : meta.num_outputs();
  for (size_t j = 0; j < n; ++j) {
    edgerun::JsonLine line;
    line.num("index", static_cast<int64_t>(j));
    auto tag = inputs ? meta.input_tag(j) : meta.output_tag(j);
    auto info = inputs ? meta.input_tensor_meta(j) : meta.output_tensor_meta(j);
    if (tag.ok() && *tag == Tag::Tensor && info.ok()) {
      line.raw("shape", edgerun::json_int_array(to_vec(info->sizes())))
          .str("dtype", dtype_text(info->scalar_type()))
          .num("nbytes", static_cast<int64_t>(info->nbytes()));
    } else {
      line.null("shape").null("dtype").null("nbytes");
    }
    if (inputs) line.str("source", source);
    out += (j ? "," : "") + line.text();
  }
  return out + "]";
}

// ---------------------------------------------------------------------------------------------
// Files and numbers.

bool read_file(const std::string& path, std::vector<uint8_t>* out, std::string* why) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *why = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (f.bad()) {
    *why = "cannot read " + path;
    return false;
  }
  return true;
}

bool parse_double(const std::string& text, double lo, double hi, double* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || *end != '\0' || !(v >= lo && v <= hi)) return false;
  *out = v;
  return true;
}

bool parse_int(const std::string& text, int64_t lo, int64_t* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < lo) return false;
  *out = v;
  return true;
}

// ---------------------------------------------------------------------------------------------
// The command line.

bool Args::next() {
  if (i_ + 1 >= argc_) return false;
  flag_ = argv_[++i_];
  inline_.clear();
  size_t eq = flag_.find('=');
  has_inline_ = flag_.rfind("--", 0) == 0 && eq != std::string::npos;
  if (has_inline_) {
    inline_ = flag_.substr(eq + 1);
    flag_ = flag_.substr(0, eq);
  }
  return true;
}

bool Args::value(std::string* out) {
  if (has_inline_) {
    *out = inline_;
    return true;
  }
  if (i_ + 1 >= argc_) return false;
  *out = argv_[++i_];
  return true;
}

std::string Args::int_value(int64_t lo, int64_t* out) {
  std::string v;
  if (!value(&v)) return flag_ + " needs a value";
  if (!parse_int(v, lo, out)) return flag_ + " needs an integer >= " + std::to_string(lo) + ", got '" + v + "'";
  return "";
}

std::string Args::double_value(double lo, double hi, const std::string& want, double* out) {
  std::string v;
  if (!value(&v)) return flag_ + " needs a number";
  if (!parse_double(v, lo, hi, out)) return flag_ + " needs " + want + ", got '" + v + "'";
  return "";
}

std::string Args::path_value(std::string* out) {
  if (!value(out) || out->empty()) return flag_ + " needs a path";
  return "";
}

std::string Args::choice_value(std::initializer_list<const char*> choices, const std::string& said,
                               std::string* out, const char* got) {
  if (!value(out)) return flag_ + " needs " + said;
  for (const char* c : choices)
    if (*out == c) return "";
  return flag_ + " must be " + said + ", " + got + " '" + *out + "'";
}

// ---------------------------------------------------------------------------------------------
// --threads auto: the rule every mode's trial shares.

std::string choose_pool(const std::function<int64_t()>& median_ns, const std::function<void(JsonLine&)>& describe) {
  auto* p = executorch::extension::threadpool::get_threadpool();
  if (p == nullptr) return "null";
  const uint32_t all = static_cast<uint32_t>(p->get_thread_count());
  if (all <= 1) return "null";
  std::vector<std::pair<uint32_t, int64_t>> medians;
  for (uint32_t n : {all, 1u}) {
    if (!p->_unsafe_reset_threadpool(n)) return "null";
    int64_t median = median_ns();
#if defined(__GLIBC__)
    malloc_trim(0);  // the trial's program is gone: its freed heap should not add to the run's peak RSS
#endif
    if (median < 0) {
      p->_unsafe_reset_threadpool(all);  // the run gets the pool it had before the trial
      return "null";
    }
    medians.emplace_back(n, median);
  }
  uint32_t chosen = medians[1].second <= medians[0].second * 105 / 100 ? medians[1].first : medians[0].first;
  if (!p->_unsafe_reset_threadpool(chosen)) return "null";
  std::string trials = "[";
  for (size_t i = 0; i < medians.size(); ++i)
    trials += (i ? "," : "") + JsonLine()
                                   .num("threads", static_cast<int64_t>(medians[i].first))
                                   .num("median_ns", medians[i].second)
                                   .text();
  JsonLine out;
  out.num("chosen", static_cast<int64_t>(chosen));
  describe(out);
  return out.raw("trials", trials + "]").text();
}

}  // namespace edgerun
