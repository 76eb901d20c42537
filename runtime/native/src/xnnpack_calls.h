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

// The calls ExecuTorch made since the process started, and how many of them the runner answered
// without doing the work again. All zero for a program without an XNNPACK partition.
struct Counts {
  uint64_t reshapes = 0, reshapes_skipped = 0, setups = 0, setups_skipped = 0;
};
Counts counts();
// The summary's `xnnpack_calls` object.
std::string counts_json();

}  // namespace edgerun::xnnpack_calls
