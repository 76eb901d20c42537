// Reshape and set up an XNNPACK runtime only when something changed (xnnpack_calls.h).
//
// How: the wheel's libexecutorch_backend_xnnpack.so calls XNNPACK's public entry points
// (xnn_create_runtime_v4, xnn_reshape_external_value, xnn_reshape_runtime, xnn_setup_runtime_v2,
// xnn_delete_runtime) through its PLT, on x86-64 and on aarch64 alike (`readelf -r` lists JUMP_SLOT
// relocations for them), and the runner links that library dynamically. A definition in the executable
// comes first in the dynamic linker's lookup, so the functions below receive those calls; each passes it
// on to the library's own function (dlsym RTLD_NEXT) unless the work would repeat the last call's exactly.
// tests/runtime/test_xnnpack_calls.py checks that the calls do arrive here and that the outputs do not
// change.
//
// When a call is answered without the work:
// - xnn_reshape_runtime: this runtime was reshaped before and succeeded; since then no external value
//   of it got another shape (xnn_reshape_external_value is watched for that); and the thread pool has
//   the thread count it had then (operators pick their tiling from it). Every operator would compute
//   the sizes and kernels it already has.
// - xnn_setup_runtime_v2: this runtime was set up before and succeeded, with the same external values
//   (ids and data pointers), and no runtime at all was reshaped since. The last condition covers the
//   workspace that ExecuTorch's XNNPACK runtimes share (workspace_sharing global, the wheel's default):
//   a reshape may re-plan memory and move it, and XNNPACK then moves the other runtimes' values but not
//   their operators' pointers, which only a setup renews.
// Nothing else changes an XNNPACK runtime between executes: invoking it keeps its shapes and pointers.
// Programs whose shapes change every execute (an LLM's decode step) reshape as before.
//
// The operator timer (set_operator_timer): ExecuTorch asks for XNN_FLAG_BASIC_PROFILING at
// xnn_create_runtime_v4 and, right after, reads the runtime's operator count and names through
// xnn_get_runtime_profiling_info for its XNNProfiler; it reads the timings only when an event tracer (an
// ETDump) is attached. Without one, the runner leaves the flag off and answers those two reads for such a
// runtime with no operators (XNNPACK itself would refuse them, and the profiler would then log an error
// at every execute). XNNPACK reads its clock around every operator of a runtime that has the flag.
#include "xnnpack_calls.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "threadpool_api.h"

// XNNPACK's public types and entry points, as its include/xnnpack.h declares them (the wheel ships no
// XNNPACK header). Only the C names and these layouts link them: xnn_status is a C enum whose
// xnn_status_success is 0, xnn_external_value is {uint32_t id; void* data;}, and the subgraph, weights
// cache, workspace and thread pool handles that xnn_create_runtime_v4 takes are pointers passed through.
extern "C" {
struct xnn_runtime;
typedef struct xnn_runtime* xnn_runtime_t;
struct xnn_external_value {
  uint32_t id;
  void* data;
};
}

namespace edgerun::xnnpack_calls {
namespace {

// include/xnnpack.h at the commit ExecuTorch 1.5.1 builds (92a7ad50): enum xnn_status, the flag, and
// enum xnn_profile_info.
constexpr int kXnnSuccess = 0;
constexpr int kXnnOutOfMemory = 6;
constexpr uint32_t kXnnFlagBasicProfiling = 0x00000008;
constexpr int kProfileNumOperators = 0;

struct RuntimeState {
  bool reshaped = false;       // a reshape succeeded, and no input shape changed since
  size_t reshape_threads = 0;  // the pool's thread count at that reshape
  bool set_up = false;         // a setup succeeded with `externals`
  uint64_t setup_epoch = 0;    // the reshape epoch of that setup
  std::vector<xnn_external_value> externals;
  std::unordered_map<uint32_t, std::vector<size_t>> shapes;  // external id -> its dims
  bool untimed = false;        // created without the operator timer ExecuTorch asked for
};

std::mutex g_mutex;
Policy g_policy = Policy::kOnChange;
bool g_operator_timer = true;
std::unordered_map<xnn_runtime_t, RuntimeState> g_runtimes;
uint64_t g_reshape_epoch = 0;  // +1 for every reshape done, of any runtime
Counts g_counts;

// The library's own definition of `name` (the next one after the runner's in lookup order).
template <class F>
F library_function(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (f == nullptr) {
    std::fprintf(stderr, "edgerun-runner: no library defines %s (%s); the XNNPACK backend library is missing\n", name,
                 dlerror());
    std::abort();
  }
  return reinterpret_cast<F>(f);
}

size_t pool_threads() {
  auto* p = executorch::extension::threadpool::get_threadpool();
  return p ? p->get_thread_count() : 0;
}

bool same_externals(const std::vector<xnn_external_value>& a, size_t n, const xnn_external_value* b) {
  if (a.size() != n) return false;
  for (size_t i = 0; i < n; ++i)
    if (a[i].id != b[i].id || a[i].data != b[i].data) return false;
  return true;
}

}  // namespace

void set_policy(Policy p) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_policy = p;
}

const char* policy_name() { return g_policy == Policy::kOnChange ? "on-change" : "always"; }

void set_operator_timer(bool on) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_operator_timer = on;
}

bool operator_timer() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_operator_timer;
}

Counts counts() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_counts;
}

std::string counts_json() {
  Counts c = counts();
  char buf[240];
  std::snprintf(buf, sizeof(buf),
                "{\"reshapes\":%llu,\"reshapes_skipped\":%llu,\"setups\":%llu,\"setups_skipped\":%llu,"
                "\"runtimes_untimed\":%llu}",
                static_cast<unsigned long long>(c.reshapes), static_cast<unsigned long long>(c.reshapes_skipped),
                static_cast<unsigned long long>(c.setups), static_cast<unsigned long long>(c.setups_skipped),
                static_cast<unsigned long long>(c.runtimes_untimed));
  return buf;
}

}  // namespace edgerun::xnnpack_calls

using edgerun::xnnpack_calls::Policy;
namespace xc = edgerun::xnnpack_calls;

extern "C" int xnn_reshape_external_value(xnn_runtime_t runtime, uint32_t external_id, size_t num_dims,
                                          const size_t* dims) {
  static auto next = xc::library_function<int (*)(xnn_runtime_t, uint32_t, size_t, const size_t*)>(
      "xnn_reshape_external_value");
  int status = next(runtime, external_id, num_dims, dims);
  std::lock_guard<std::mutex> lock(xc::g_mutex);
  xc::RuntimeState& st = xc::g_runtimes[runtime];
  std::vector<size_t>& known = st.shapes[external_id];
  if (status != xc::kXnnSuccess || known.size() != num_dims || !std::equal(known.begin(), known.end(), dims)) {
    known.assign(dims, dims + (status == xc::kXnnSuccess ? num_dims : 0));
    st.reshaped = false;
  }
  return status;
}

extern "C" int xnn_reshape_runtime(xnn_runtime_t runtime) {
  static auto next = xc::library_function<int (*)(xnn_runtime_t)>("xnn_reshape_runtime");
  const size_t threads = xc::pool_threads();
  {
    std::lock_guard<std::mutex> lock(xc::g_mutex);
    xc::RuntimeState& st = xc::g_runtimes[runtime];
    if (xc::g_policy == Policy::kOnChange && st.reshaped && st.reshape_threads == threads) {
      ++xc::g_counts.reshapes_skipped;
      return xc::kXnnSuccess;
    }
  }
  int status = next(runtime);
  std::lock_guard<std::mutex> lock(xc::g_mutex);
  xc::RuntimeState& st = xc::g_runtimes[runtime];
  ++xc::g_counts.reshapes;
  ++xc::g_reshape_epoch;
  st.reshaped = status == xc::kXnnSuccess;
  st.reshape_threads = threads;
  st.set_up = false;
  return status;
}

extern "C" int xnn_setup_runtime_v2(xnn_runtime_t runtime, size_t num_external_values,
                                    const xnn_external_value* external_values) {
  static auto next =
      xc::library_function<int (*)(xnn_runtime_t, size_t, const xnn_external_value*)>("xnn_setup_runtime_v2");
  {
    std::lock_guard<std::mutex> lock(xc::g_mutex);
    xc::RuntimeState& st = xc::g_runtimes[runtime];
    if (xc::g_policy == Policy::kOnChange && st.set_up && st.setup_epoch == xc::g_reshape_epoch &&
        xc::same_externals(st.externals, num_external_values, external_values)) {
      ++xc::g_counts.setups_skipped;
      return xc::kXnnSuccess;
    }
  }
  int status = next(runtime, num_external_values, external_values);
  std::lock_guard<std::mutex> lock(xc::g_mutex);
  xc::RuntimeState& st = xc::g_runtimes[runtime];
  ++xc::g_counts.setups;
  st.set_up = status == xc::kXnnSuccess;
  st.setup_epoch = xc::g_reshape_epoch;
  st.externals.assign(external_values, external_values + num_external_values);
  return status;
}

// A new runtime starts with no history, also where the allocator hands out a deleted runtime's address
// (xnn_delete_runtime forgets it too; this holds should a deletion ever bypass the runner).
extern "C" int xnn_create_runtime_v4(void* subgraph, void* weights_cache, void* workspace, void* threadpool,
                                     uint32_t flags, xnn_runtime_t* runtime_out) {
  static auto next = xc::library_function<int (*)(void*, void*, void*, void*, uint32_t, xnn_runtime_t*)>(
      "xnn_create_runtime_v4");
  const bool untimed = (flags & xc::kXnnFlagBasicProfiling) != 0 && !xc::operator_timer();
  int status = next(subgraph, weights_cache, workspace, threadpool,
                    untimed ? flags & ~xc::kXnnFlagBasicProfiling : flags, runtime_out);
  if (status == xc::kXnnSuccess && runtime_out != nullptr) {
    std::lock_guard<std::mutex> lock(xc::g_mutex);
    xc::g_runtimes.erase(*runtime_out);
    if (untimed) {
      xc::g_runtimes[*runtime_out].untimed = true;
      ++xc::g_counts.runtimes_untimed;
    }
  }
  return status;
}

// ExecuTorch's XNNProfiler reads a runtime's operator count and names when the runtime is created, and
// its timings after an execute only with an event tracer. A runtime the runner created without the timer
// has none to report: zero operators, no names, no timings. Every other runtime gets XNNPACK's answer.
extern "C" int xnn_get_runtime_profiling_info(xnn_runtime_t runtime, int param_name, size_t param_value_size,
                                              void* param_value, size_t* param_value_size_ret) {
  static auto next = xc::library_function<int (*)(xnn_runtime_t, int, size_t, void*, size_t*)>(
      "xnn_get_runtime_profiling_info");
  bool untimed = false;
  {
    std::lock_guard<std::mutex> lock(xc::g_mutex);
    auto it = xc::g_runtimes.find(runtime);
    untimed = it != xc::g_runtimes.end() && it->second.untimed;
  }
  if (!untimed) return next(runtime, param_name, param_value_size, param_value, param_value_size_ret);
  if (param_name == xc::kProfileNumOperators) {
    if (param_value_size < sizeof(size_t) || param_value == nullptr) {
      if (param_value_size_ret != nullptr) *param_value_size_ret = sizeof(size_t);
      return xc::kXnnOutOfMemory;
    }
    const size_t none = 0;
    std::memcpy(param_value, &none, sizeof(none));
  }
  return xc::kXnnSuccess;  // names and timings of zero operators: nothing to write
}

extern "C" int xnn_delete_runtime(xnn_runtime_t runtime) {
  static auto next = xc::library_function<int (*)(xnn_runtime_t)>("xnn_delete_runtime");
  {
    std::lock_guard<std::mutex> lock(xc::g_mutex);
    xc::g_runtimes.erase(runtime);
  }
  return next(runtime);
}
