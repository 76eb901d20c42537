// What the runner does around ExecuTorch's XNNPACK delegate calls (xnnpack_calls.cpp): before every
// execute, ExecuTorch's XNNExecutor reshapes the whole XNNPACK runtime (every operator) and sets it
// up again (every operator's pointers), even when no input shape and no buffer changed since the last
// execute. With --xnnpack-reshape on-change (the default) the runner does that work only when something
// did change, as TFLite's XNNPACK delegate does; `always` is ExecuTorch's own behaviour.
#pragma once

#include <cstdint>
#include <string>

namespace edgerun::xnnpack_calls {

enum class Policy { kOnChange, kAlways };

// Set before any program is loaded (main.cpp, from --xnnpack-reshape).
void set_policy(Policy p);
const char* policy_name();

// Whether XNNPACK times every operator. The wheel's delegate is built with ExecuTorch's event tracer, so
// it creates every runtime with XNN_FLAG_BASIC_PROFILING: a clock read around each operator of every
// execute, which only an ETDump ever reads. Off (the runner's default without --etdump), the runner
// creates runtimes without that flag and answers ExecuTorch's profiler that they time no operator.
// Set before any program is loaded (main.cpp: on exactly when --etdump is given).
void set_operator_timer(bool on);
bool operator_timer();

// The calls ExecuTorch made since the process started, and how many of them the runner answered
// without doing the work again. All zero for a program without an XNNPACK partition.
struct Counts {
  uint64_t reshapes = 0, reshapes_skipped = 0, setups = 0, setups_skipped = 0;
  uint64_t runtimes_untimed = 0;  // runtimes created without the operator timer ExecuTorch asked for
};
Counts counts();
// The summary's `xnnpack_calls` object.
std::string counts_json();

}  // namespace edgerun::xnnpack_calls
