// edgerun-runner: load an ExecuTorch program, run it in one of its modes, say truthfully how it ran.
//
// Output is the JSON-lines protocol of PROTOCOL.md (stdout); ExecuTorch's log goes to stderr.
// No torch, no Python: this is what runs on the device. This file parses the common flags, sets
// up the runtime, loads the program, hands it to the chosen mode (mode.h) and prints the summary.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/platform/runtime.h>

#include "json_out.h"
#include "mode.h"
#include "runner_common.h"
#include "runner_info.h"
#include "threadpool_api.h"
#include "xnnpack_calls.h"

namespace {

using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::MethodMeta;
using edgerun::Args;
using edgerun::Clock;
using edgerun::CommonOptions;
using edgerun::error_name;
using edgerun::fail;
using edgerun::kExitLoad;
using edgerun::kExitOutput;
using edgerun::kExitUsage;
using edgerun::Mode;
using edgerun::ns_between;

// The run modes, in the order they are chosen: the first one the command line chose runs, so the
// default (forward, always chosen) is last. --help lists them the other way round.
using ModeFactory = std::unique_ptr<Mode> (*)();
constexpr ModeFactory kModes[] = {edgerun::make_train_mode, edgerun::make_llm_mode, edgerun::make_forward_mode};

using Modes = std::vector<std::unique_ptr<Mode>>;

Modes make_modes() {
  Modes modes;
  for (ModeFactory make : kModes) modes.push_back(make());
  return modes;
}

Mode& chosen_mode(const Modes& modes) {
  for (const auto& m : modes)
    if (m->chosen()) return *m;
  return *modes.back();
}

// ---------------------------------------------------------------------------------------------
// Command line.

void print_usage(const Modes& modes) {
  std::string text;
  for (auto m = modes.rbegin(); m != modes.rend(); ++m) text += (text.empty() ? "usage: " : "       ") + (*m)->usage();
  text += "       every mode: [--ptd PATH] the program's external data file (.ptd), when it has one\n";
  text += "       edgerun-runner --list-kernels | --version | --help\n"
          "Prints JSON lines on stdout (see PROTOCOL.md); exit codes: 2 usage, 10 load, 11 input,\n"
          "12 execute, 13 output.\n";
  std::fputs(text.c_str(), stderr);
}

// --threads T|auto.
std::string threads_value(Args& a, CommonOptions* c) {
  std::string v;
  if (!a.value(&v)) return "--threads needs a count or auto";
  if (v == "auto") c->threads_auto = true;
  else if (!edgerun::parse_int(v, 0, &c->threads)) return "--threads needs an integer >= 0 or auto, got '" + v + "'";
  return "";
}

// Takes the current flag when it is a common one (*problem: its value is bad).
bool parse_common_flag(Args& a, CommonOptions* c, std::string* problem) {
  const std::string& f = a.flag();
  if (f == "--model") {
    if (!a.value(&c->model)) *problem = "--model needs a path";
  } else if (f == "--ptd") {
    *problem = a.path_value(&c->data);
  } else if (f == "--method") {
    if (!a.value(&c->method)) *problem = "--method needs a name";
  } else if (f == "--seed") {
    int64_t s = 0;
    *problem = a.int_value(0, &s);
    c->seed = static_cast<uint64_t>(s);
  } else if (f == "--warmup") {
    *problem = a.int_value(0, &c->warmup);
    c->warmup_given = true;
  } else if (f == "--threads") {
    *problem = threads_value(a, c);
  } else if (f == "--xnnpack-workspace") {
    *problem = a.choice_value({"disabled", "per-model", "global"}, "disabled, per-model or global", &c->xnn_workspace,
                              "not");
  } else if (f == "--xnnpack-weight-cache") {
    *problem = a.choice_value({"on", "off"}, "on or off", &c->xnn_weight_cache, "not");
  } else if (f == "--xnnpack-reshape") {
    *problem = a.choice_value({"on-change", "always"}, "on-change or always", &c->xnn_reshape, "not");
  } else if (f == "--etdump") {
    if (!a.value(&c->etdump)) *problem = "--etdump needs a path";
  } else if (f == "--load-mode") {
    *problem = a.choice_value({"mmap", "file"}, "mmap or file", &c->load_mode);
  } else if (f == "--list-kernels") {
    c->list_kernels = true;
  } else if (f == "--version") {
    c->version = true;
  } else if (f == "--verbose") {
    c->verbose = true;
  } else if (f == "--help" || f == "-h") {
    c->help = true;
  } else {
    return false;
  }
  return true;
}

// Every flag goes to the common parser, then to each mode; returns "" or the first usage problem.
std::string parse_flags(int argc, char** argv, const Modes& modes, CommonOptions* c) {
  Args a(argc, argv);
  while (a.next()) {
    std::string problem;
    bool taken = parse_common_flag(a, c, &problem);
    for (size_t m = 0; !taken && m < modes.size(); ++m) taken = modes[m]->parse_flag(a, &problem);
    if (!taken) return "unknown argument '" + a.arg() + "'";
    if (!problem.empty()) return problem;
  }
  return "";
}

// The checks after parsing, in the order mode.h describes.
std::string check_flags(const Modes& modes, CommonOptions* c) {
  if (c->model.empty() && !c->list_kernels && !c->version && !c->help) return "--model is required";
  for (const auto& m : modes) {
    std::string problem = m->check_flags();
    if (!problem.empty()) return problem;
  }
  for (const auto& m : modes) {
    if (m->chosen()) {
      bool others_data = false;
      for (const auto& other : modes) others_data = others_data || (other != m && other->data_flags_given());
      return m->check_chosen(*c, others_data);
    }
    std::string problem = m->check_unchosen();
    if (!problem.empty()) return problem;
  }
  return "";
}

std::string parse_args(int argc, char** argv, const Modes& modes, CommonOptions* c) {
  std::string problem = parse_flags(argc, argv, modes, c);
  return problem.empty() ? check_flags(modes, c) : problem;
}

// ---------------------------------------------------------------------------------------------
// Runtime set-up, before anything is loaded.

// The pool is resized before anything is loaded: an XNNPACK runtime keeps the pool it was
// created with, so resizing later would leave it pointing at a destroyed one.
std::string resize_pool(int64_t threads) {
  auto* p = executorch::extension::threadpool::get_threadpool();
  if (p == nullptr || !p->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)))
    return "could not resize the thread pool to " + std::to_string(threads) + " threads";
  return "";
}

// XNNPACK's process-wide backend options (keys of backends/xnnpack/runtime/XNNPACKBackend.h),
// set before any program is loaded: a delegate reads them when it is initialised.
std::string set_xnnpack_options(const CommonOptions& c) {
  executorch::runtime::runtime_init();
  executorch::runtime::BackendOptions<2> xnn;
  if (!c.xnn_workspace.empty())
    xnn.set_option("workspace_sharing_mode", c.xnn_workspace == "disabled" ? 0 : c.xnn_workspace == "per-model" ? 1 : 2);
  if (!c.xnn_weight_cache.empty()) xnn.set_option("weight_cache_enabled", c.xnn_weight_cache == "on");
  Error e = executorch::runtime::set_option("XnnpackBackend", xnn.view());
  if (e != Error::Ok)
    return "cannot set the XNNPACK backend options (" + error_name(e) +
           "): this runner has no XNNPACK backend, or its XNNPACK predates these options";
  return "";
}

std::string set_up_runtime(const CommonOptions& c) {
  edgerun::xnnpack_calls::set_policy(c.xnn_reshape == "always" ? edgerun::xnnpack_calls::Policy::kAlways
                                                               : edgerun::xnnpack_calls::Policy::kOnChange);
  edgerun::xnnpack_calls::set_operator_timer(!c.etdump.empty());  // only an ETDump reads XNNPACK's timings
  std::string problem = c.threads > 0 ? resize_pool(c.threads) : "";
  if (problem.empty() && (!c.xnn_workspace.empty() || !c.xnn_weight_cache.empty())) problem = set_xnnpack_options(c);
  return problem;
}

// ---------------------------------------------------------------------------------------------
// Load.

struct LoadTimes {
  Clock::time_point t0, t1, t2, t3;  // program load from t0 to t1, method load from t2 to t3
};

void load_program(Module& module, const CommonOptions& c, LoadTimes* times) {
  times->t0 = Clock::now();
  Error err = module.load(executorch::runtime::Program::Verification::InternalConsistency);
  times->t1 = Clock::now();
  if (err != Error::Ok && !c.data.empty())
    fail("load", kExitLoad, err,
         "cannot load program " + c.model + " with its data file " + c.data + " (" + error_name(err) +
             "): one of them is not valid for this runtime (corrupt, truncated, or written by an "
             "incompatible ExecuTorch version), or the data file is not the program's own .ptd");
  if (err != Error::Ok)
    fail("load", kExitLoad, err,
         "cannot load program " + c.model + " (" + error_name(err) +
             "): the file is not a valid .pte for this runtime (corrupt, truncated, or written by "
             "an incompatible ExecuTorch version)");
  auto names = module.method_names();
  if (!names.ok()) fail("load", kExitLoad, names.error(), "cannot list the methods of " + c.model);
  if (names->count(c.method) == 0) {
    std::vector<std::string> have(names->begin(), names->end());
    std::sort(have.begin(), have.end());
    std::string list;
    for (const auto& n : have) list += (list.empty() ? "" : ", ") + n;
    fail("load", kExitLoad, Error::NotFound,
         "program " + c.model + " has no method '" + c.method + "' (it has: " + list + ")");
  }
}

void load_method(Module& module, const CommonOptions& c, LoadTimes* times,
                 std::unique_ptr<edgerun::LazyPlannedMemory>* planned) {
  times->t2 = Clock::now();
  Error err = edgerun::load_method_lazily(module, c.method, planned);
  times->t3 = Clock::now();
  if (err == Error::Ok) return;
  std::string hint;
  if (err == Error::OperatorMissing)
    hint = ": an operator the program uses is not registered in this runner (see the log for its "
           "name; a bundle with the kernel library that provides it is needed)";
  else if ((err == Error::InvalidState || err == Error::NotFound) && c.data.empty())
    hint = std::string(": ") + (err == Error::NotFound ? "a delegate backend the program uses may not be linked into "
                                                         "this runner, or " : "") +
           "the program may keep constants in an external data file (.ptd) and was loaded without one: "
           "give it with --ptd PATH (the .ptd exported beside " + c.model + ")";
  else if (err == Error::NotFound)
    hint = ": a constant the program needs is not in the data file " + c.data +
           " (not the program's own .ptd?), or a delegate backend the program uses is not linked into this runner";
  fail("load", kExitLoad, err, "load_method(" + c.method + ") failed with " + error_name(err) + hint);
}

// The `load` line of every mode: the program, the method, load times and the tensors' metadata.
void emit_load(const CommonOptions& c, const LoadTimes& t, const MethodMeta& meta, const std::string& inputs_json) {
  edgerun::JsonLine()
      .str("type", "load")
      .str("program", c.model)
      .str_or_null("data", c.data.empty() ? nullptr : &c.data)
      .str("method", c.method)
      .str("load_mode", c.load_mode)
      .num("program_load_ns", ns_between(t.t0, t.t1))
      .num("method_load_ns", ns_between(t.t2, t.t3))
      .num("load_ns", ns_between(t.t0, t.t1) + ns_between(t.t2, t.t3))
      .raw("inputs", inputs_json)
      .raw("outputs", edgerun::describe_tensors(meta, false, ""))
      .emit();
}

// ---------------------------------------------------------------------------------------------
// Summary.

// Writes the recorded ETDump to path; returns the summary's `etdump` value ("null" without one).
std::string write_etdump(executorch::etdump::ETDumpGen* etdump, const std::string& path) {
  if (!etdump) return "null";
  auto data = etdump->get_etdump_data();
  if (data.buf == nullptr || data.size == 0)
    fail("output", kExitOutput, Error::Internal, "the ETDump is empty; nothing was recorded");
  FILE* f = std::fopen(path.c_str(), "wb");
  bool ok = f && std::fwrite(data.buf, 1, data.size, f) == data.size;
  if (f) ok = (std::fclose(f) == 0) && ok;
  std::free(data.buf);
  if (!ok)
    fail("output", kExitOutput, Error::AccessFailed, "cannot write the ETDump to " + path + ": " + std::strerror(errno));
  return edgerun::JsonLine().str("path", path).num("bytes", static_cast<int64_t>(data.size)).text();
}

struct ProcStatus {
  bool present = false;
  int64_t vm_hwm_kb = 0;
  int64_t vm_rss_kb = 0;
};

ProcStatus read_proc_status() {
  ProcStatus st;
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return st;
  char line[256];
  while (std::fgets(line, sizeof(line), f)) {
    long long v = 0;
    if (std::sscanf(line, "VmHWM: %lld kB", &v) == 1) {
      st.vm_hwm_kb = v;
      st.present = true;
    } else if (std::sscanf(line, "VmRSS: %lld kB", &v) == 1) {
      st.vm_rss_kb = v;
    }
  }
  std::fclose(f);
  return st;
}

void emit_summary(const edgerun::Summary& s, const std::string& etdump_json) {
  ProcStatus st = read_proc_status();
  edgerun::JsonLine line;
  line.str("type", "summary");
  if (!s.mode.empty()) line.str("mode", s.mode);
  line.num("iterations", s.iterations)
      .num("warmup", s.warmup)
      .num("timed_total_ns", s.timed_total_ns)
      .num_or_null("peak_rss_kb", st.vm_hwm_kb, st.present)
      .num_or_null("rss_kb", st.vm_rss_kb, st.present)
      .raw("outputs", s.outputs_json)
      .raw("etdump", etdump_json)
      .raw("xnnpack_calls", edgerun::xnnpack_calls::counts_json())
      .emit();
  std::fflush(stdout);
}

// Loads the program and its method, runs the mode on it, prints the summary.
void run(Mode& mode, const CommonOptions& c) {
  struct stat sb;
  if (::stat(c.model.c_str(), &sb) != 0)
    fail("load", kExitLoad, Error::AccessFailed, "cannot open program " + c.model + ": " + std::strerror(errno));
  if (!c.data.empty() && ::stat(c.data.c_str(), &sb) != 0)
    fail("load", kExitLoad, Error::AccessFailed,
         "cannot open the program's data file " + c.data + ": " + std::strerror(errno) +
             " (--ptd must name the .ptd written beside " + c.model + ")");
  executorch::etdump::ETDumpGen* etdump = nullptr;
  std::unique_ptr<executorch::runtime::EventTracer> tracer;
  if (!c.etdump.empty()) {
    auto gen = std::make_unique<executorch::etdump::ETDumpGen>();
    etdump = gen.get();
    tracer = std::move(gen);
  }
  std::unique_ptr<edgerun::LazyPlannedMemory> planned;  // outlives the module's method (declared first)
  Module module(c.model, edgerun::data_files(c),
                c.load_mode == "mmap" ? Module::LoadMode::Mmap : Module::LoadMode::File, std::move(tracer));
  LoadTimes times;
  load_program(module, c, &times);
  auto meta = module.method_meta(c.method);
  if (!meta.ok()) fail("load", kExitLoad, meta.error(), "cannot read metadata of method " + c.method);
  load_method(module, c, &times, &planned);

  edgerun::Loaded loaded{module, c, *meta, [&](const std::string& inputs) { emit_load(c, times, *meta, inputs); },
                         [&] {
                           if (etdump) etdump->reset();
                         }};
  edgerun::Summary s = mode.run(loaded);
  emit_summary(s, write_etdump(etdump, c.etdump));
}

}  // namespace

int main(int argc, char** argv) {
  executorch::runtime::runtime_init();
  edgerun::capture_executorch_log();

  Modes modes = make_modes();
  CommonOptions c;
  std::string usage_problem = parse_args(argc, argv, modes, &c);
  edgerun::set_verbose_log(c.verbose);
  if (c.help) {
    print_usage(modes);
    return 0;
  }
  Mode& mode = chosen_mode(modes);
  if (usage_problem.empty()) usage_problem = set_up_runtime(c);
  std::string threads_auto = "null";
  if (usage_problem.empty() && c.threads_auto && !c.version && !c.list_kernels && !c.model.empty())
    threads_auto = mode.choose_threads(c);
  edgerun::print_header(threads_auto);
  if (!usage_problem.empty()) {
    print_usage(modes);
    fail("usage", kExitUsage, Error::InvalidArgument, usage_problem);
  }
  if (c.version) return 0;
  if (c.list_kernels) {
    edgerun::print_kernels();
    return 0;
  }
  run(mode, c);
  return 0;
}
