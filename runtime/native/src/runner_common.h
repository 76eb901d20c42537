// What main.cpp and the runner's modes (llm.cpp) share: exit codes, the one failure path (an
// `error` line, then exit), and small text helpers for messages.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>

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
std::string shape_text(const std::vector<int64_t>& shape);
std::string dtype_text(executorch::aten::ScalarType t);
bool read_file(const std::string& path, std::vector<uint8_t>* out, std::string* why);

// A uniform double in [0, 1) from the top 53 bits of a 64-bit draw: the same sequence on every
// platform (the standard distributions may differ between standard libraries).
template <typename Rng>
inline double unit_draw(Rng* rng) {
  return static_cast<double>((*rng)() >> 11) * 0x1.0p-53;
}

inline int64_t ns_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}

}  // namespace edgerun
