// The `header` and `kernels` lines (see runner_info.h).
#include "runner_info.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <thread>
#include <variant>
#include <vector>

#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/kernel/operator_registry.h>

#include "json_out.h"
#include "threadpool_api.h"
#include "xnnpack_calls.h"

#ifndef EDGERUN_RUNNER_VERSION
#define EDGERUN_RUNNER_VERSION "0.0.0"
#endif
#ifndef EDGERUN_SOURCE_HASH
#define EDGERUN_SOURCE_HASH "unknown"
#endif
#ifndef EDGERUN_ET_VERSION
#define EDGERUN_ET_VERSION "unknown"
#endif
#ifndef EDGERUN_BUILD_TYPE
#define EDGERUN_BUILD_TYPE "unknown"
#endif
#ifndef EDGERUN_CXX_FLAGS
#define EDGERUN_CXX_FLAGS ""
#endif
#ifndef EDGERUN_VARIANT
#define EDGERUN_VARIANT "full"
#endif

namespace edgerun {

namespace {

// What this runner takes beyond protocol 1's first flags, for a pre-flight to tell it from an older
// one (bundle.json records the list; runtime/preflight.py checks it): "ptd", --ptd PATH (a
// program's external data file); "xnnpack-reshape", --xnnpack-reshape on-change|always.
const std::vector<std::string> kFeatures = {"ptd", "xnnpack-reshape"};

using executorch::runtime::Error;

#if defined(__aarch64__)
constexpr const char* kArch = "aarch64";
#elif defined(__x86_64__)
constexpr const char* kArch = "x86_64";
#elif defined(__arm__)
constexpr const char* kArch = "armv7";
#else
constexpr const char* kArch = "unknown";
#endif

// The XNNPACK backend options in effect, when the runner lets XNNPACK reshape and set up a runtime, and
// whether XNNPACK times every operator (xnnpack_calls.h); null when this runner has no XNNPACK backend.
std::string xnnpack_options_json() {
  executorch::runtime::BackendOption opts[2];
  std::strncpy(opts[0].key, "workspace_sharing_mode", sizeof(opts[0].key) - 1);
  opts[0].value = -1;
  std::strncpy(opts[1].key, "weight_cache_enabled", sizeof(opts[1].key) - 1);
  opts[1].value = false;
  if (executorch::runtime::get_option("XnnpackBackend", {opts, 2}) != Error::Ok) return "null";
  const int* mode = std::get_if<int>(&opts[0].value);
  const bool* cache = std::get_if<bool>(&opts[1].value);
  static const char* kModes[] = {"disabled", "per-model", "global"};
  std::string out = "{\"workspace_sharing\":";
  out += (mode && *mode >= 0 && *mode < 3) ? std::string("\"") + kModes[*mode] + "\"" : "null";
  out += ",\"weight_cache\":";
  out += cache ? (*cache ? "true" : "false") : "null";
  out += ",\"reshape\":\"";
  out += xnnpack_calls::policy_name();
  out += "\",\"operator_timer\":";
  out += xnnpack_calls::operator_timer() ? "true" : "false";
  return out + "}";
}

std::string definitions_json() {
  std::vector<std::string> defs;
#ifdef ET_USE_THREADPOOL
  defs.push_back("ET_USE_THREADPOOL");
#endif
#ifdef ET_EVENT_TRACER_ENABLED
  defs.push_back("ET_EVENT_TRACER_ENABLED");
#endif
#ifdef C10_USING_CUSTOM_GENERATED_MACROS
  defs.push_back("C10_USING_CUSTOM_GENERATED_MACROS");
#endif
#ifdef NDEBUG
  defs.push_back("NDEBUG");
#endif
  return json_string_array(defs);
}

std::string compiler_name() {
#if defined(__clang__)
  return std::string("Clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("GCC ") + __VERSION__;
#else
  return "unknown";
#endif
}

// The shared library whose code a registered kernel's function lives in (its registrant).
std::string library_of(const void* fn) {
  Dl_info info;
  if (fn == nullptr || dladdr(fn, &info) == 0 || info.dli_fname == nullptr) return "unknown";
  const char* base = std::strrchr(info.dli_fname, '/');
  return base ? base + 1 : info.dli_fname;
}

}  // namespace

void print_header(const std::string& threads_auto) {
  auto* p = executorch::extension::threadpool::get_threadpool();
  std::string build = JsonLine()
                          .str("compiler", compiler_name())
                          .str("build_type", EDGERUN_BUILD_TYPE)
                          .str("cxx_flags", EDGERUN_CXX_FLAGS)
                          .str("variant", EDGERUN_VARIANT)
                          .raw("definitions", definitions_json())
                          .text();
  JsonLine()
      .str("type", "header")
      .num("protocol", 1)
      .str("runner_version", EDGERUN_RUNNER_VERSION)
      .str("runner_source_hash", EDGERUN_SOURCE_HASH)
      .str("executorch_version", EDGERUN_ET_VERSION)
      .str("arch", kArch)
      .raw("build", build)
      .raw("features", json_string_array(kFeatures))
      .num_or_null("threads", p ? static_cast<int64_t>(p->get_thread_count()) : 0, p != nullptr)
      .num("hardware_threads", static_cast<int64_t>(std::thread::hardware_concurrency()))
      .raw("xnnpack", xnnpack_options_json())
      .raw("threads_auto", threads_auto)
      .num("pid", static_cast<int64_t>(getpid()))
      .emit();
}

void print_kernels() {
  std::set<std::string> ops;
  std::map<std::string, std::set<std::string>> by_library;
  auto kernels = executorch::runtime::get_registered_kernels();
  for (size_t i = 0; i < kernels.size(); ++i) {
    if (!kernels[i].name_) continue;
    ops.insert(kernels[i].name_);
    by_library[library_of(reinterpret_cast<const void*>(kernels[i].op_))].insert(kernels[i].name_);
  }
  std::string libs_json = "{";
  for (const auto& [lib, names] : by_library) {
    if (libs_json.size() > 1) libs_json += ",";
    libs_json += json_escape(lib) + ":" + json_string_array({names.begin(), names.end()});
  }
  libs_json += "}";
  std::vector<std::string> backends;
  size_t n = executorch::runtime::get_num_registered_backends();
  for (size_t i = 0; i < n; ++i) {
    auto name = executorch::runtime::get_backend_name(i);
    if (name.ok()) backends.emplace_back(*name);
  }
  std::sort(backends.begin(), backends.end());
  JsonLine()
      .str("type", "kernels")
      .raw("operators", json_string_array({ops.begin(), ops.end()}))
      .raw("operators_by_library", libs_json)
      .raw("backends", json_string_array(backends))
      .emit();
}

}  // namespace edgerun
