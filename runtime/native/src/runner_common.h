// What main.cpp, the run modes (forward.cpp, llm.cpp, train.cpp) and the training step rules share:
// exit codes, the one failure path (an `error` line, then exit), ExecuTorch's log capture, the
// command-line reader every flag parser uses, and small text, number and file helpers. Defined in
// runner_common.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/span.h>
#include <executorch/runtime/executor/method_meta.h>

namespace edgerun {

using Clock = std::chrono::steady_clock;

constexpr int kExitUsage = 2;
constexpr int kExitLoad = 10;
constexpr int kExitInput = 11;
constexpr int kExitExecute = 12;
constexpr int kExitOutput = 13;

// Prints the protocol's `error` line (stage, ExecuTorch error name and code, message, the last
// ExecuTorch error log lines) and exits with exit_code, without running static destructors.
[[noreturn]] void fail(const char* stage, int exit_code, executorch::runtime::Error error,
                       const std::string& message);
std::string error_name(executorch::runtime::Error e);

// ExecuTorch's log: forwarded to stderr (info/debug lines only when verbose), error/fatal lines
// kept for the `error` record. Installed once, first thing in main.
void capture_executorch_log();
void set_verbose_log(bool verbose);

std::string shape_text(const std::vector<int64_t>& shape);
std::string dtype_text(executorch::aten::ScalarType t);
std::vector<int64_t> to_vec(executorch::runtime::Span<const int32_t> s);
// The `load` line's description of a method's tensors (metadata shapes: upper bounds for dynamic
// ones); inputs carry `source`.
std::string describe_tensors(const executorch::runtime::MethodMeta& meta, bool inputs, const std::string& source);

bool read_file(const std::string& path, std::vector<uint8_t>* out, std::string* why);

// Whole-text numbers for flag values: false on junk, overflow or a value outside the range.
bool parse_double(const std::string& text, double lo, double hi, double* out);
bool parse_int(const std::string& text, int64_t lo, int64_t* out);

// The command line, one argument at a time; "--flag VALUE" and "--flag=VALUE" alike. The value
// helpers return "" or the usage problem, worded as every flag's is.
class Args {
 public:
  Args(int argc, char** argv) : argc_(argc), argv_(argv) {}

  // Moves to the next argument; false after the last one.
  bool next();
  // The flag without an inline "=VALUE"; the argument exactly as given.
  const std::string& flag() const { return flag_; }
  std::string arg() const { return argv_[i_]; }
  // The flag's value: inline, or the next argument (consumed). False when there is none.
  bool value(std::string* out);
  // An integer >= lo.
  std::string int_value(int64_t lo, int64_t* out);
  // A number in [lo, hi]; `want` says which ("a number in (0, 1]") when the value is not one.
  std::string double_value(double lo, double hi, const std::string& want, double* out);
  // A path (any non-empty text).
  std::string path_value(std::string* out);
  // One of `choices`, which `said` lists in words ("zeros, ones or random"): "FLAG needs <said>"
  // without a value, "FLAG must be <said>, <got> 'V'" for another one.
  std::string choice_value(std::initializer_list<const char*> choices, const std::string& said, std::string* out,
                           const char* got = "got");

 private:
  int argc_;
  char** argv_;
  int i_ = 0;
  std::string flag_;
  std::string inline_;
  bool has_inline_ = false;
};

// A uniform double in [0, 1) from the top 53 bits of a 64-bit draw: the same sequence on every
// platform (the standard distributions may differ between standard libraries).
template <typename Rng>
inline double unit_draw(Rng* rng) {
  return static_cast<double>((*rng)() >> 11) * 0x1.0p-53;
}

// --threads auto, before the real program is loaded: times the program with every core and with one
// thread and keeps the faster pool -- fewer threads unless more are at least 5 % faster (a spinning
// pool also costs the neighbours). median_ns() is called once per pool size, after the pool is
// resized; it must load its own copy of the program (an XNNPACK runtime keeps the pool it was
// created with) and return its median time, or -1 when the program cannot be loaded or fed here.
// describe() adds what was timed ("measure" and its settings) to the trial's JSON. Returns the trial
// as the header's `threads_auto` JSON, "null" when none ran (one core, a pool that cannot be resized,
// or median_ns() < 0 -- the run itself then reports why), leaving the pool at the chosen size.
class JsonLine;
std::string choose_pool(const std::function<int64_t()>& median_ns, const std::function<void(JsonLine&)>& describe);

inline int64_t ns_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}

}  // namespace edgerun
