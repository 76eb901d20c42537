// A run mode of the runner: what one invocation does with the loaded method (time forwards, generate
// tokens, train). Each mode lives in its own file, parses and checks its own flags and prints its own
// lines; main.cpp parses the common flags, loads the program, runs the chosen mode and prints the
// `summary`. A new mode is a new file with a Mode and its factory, and one row in main.cpp's kModes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>

#include "runner_common.h"

namespace edgerun {

// The flags every mode shares (parsed by main.cpp).
struct CommonOptions {
  std::string model;
  std::string data;  // --ptd: the program's external data file (.ptd), "" when it has none
  std::string method = "forward";
  uint64_t seed = 0;
  int64_t warmup = 1;
  bool warmup_given = false;
  int64_t threads = 0;
  bool threads_auto = false;     // --threads auto: measure 1 and all cores, keep the faster
  std::string xnn_workspace;     // "" = the library's default; disabled | per-model | global
  std::string xnn_weight_cache;  // "" = the library's default; on | off
  std::string xnn_reshape = "on-change";  // on-change | always (xnnpack_calls.h)
  std::string etdump;
  std::string load_mode = "mmap";
  bool list_kernels = false;
  bool version = false;
  bool help = false;
  bool verbose = false;
};

// The data files every Module made for the program is given (ExecuTorch resolves external constants
// and delegates' named data only through them): the --ptd file, or none.
inline std::vector<std::string> data_files(const CommonOptions& c) {
  return c.data.empty() ? std::vector<std::string>{} : std::vector<std::string>{c.data};
}

// A method's memory-planned buffers as anonymous mappings. Module's own are std::vectors, zero-filled at
// load: every page of the plan becomes resident at once. The plan is sized for every dynamic dimension's
// upper bound (an LLM's logits [1, max_context, vocab] alone are 400 MB at max context 2048), so a program
// would cost its worst case in memory whatever it runs. These read as zeros too, but a page becomes
// resident only when the program first writes it, so peak RSS is what the run touches.
class LazyPlannedMemory {
 public:
  // The buffers meta's plan asks for; null (and *why says so) when the kernel refuses a mapping.
  static std::unique_ptr<LazyPlannedMemory> make(const executorch::runtime::MethodMeta& meta, std::string* why);
  ~LazyPlannedMemory();
  LazyPlannedMemory(const LazyPlannedMemory&) = delete;
  LazyPlannedMemory& operator=(const LazyPlannedMemory&) = delete;
  executorch::runtime::HierarchicalAllocator* allocator() { return allocator_.get(); }

 private:
  LazyPlannedMemory() = default;
  std::vector<executorch::runtime::Span<uint8_t>> spans_;
  std::unique_ptr<executorch::runtime::HierarchicalAllocator> allocator_;
};

// module.load_method(method) with its planned buffers from a LazyPlannedMemory, which *keep then owns (it
// must outlive the method: declare it before the Module). Falls back to Module's own buffers when no
// mapping can be made.
executorch::runtime::Error load_method_lazily(executorch::extension::Module& module, const std::string& method,
                                              std::unique_ptr<LazyPlannedMemory>* keep);

// What a mode gets once the program and its method are loaded.
struct Loaded {
  executorch::extension::Module& module;
  const CommonOptions& common;
  const executorch::runtime::MethodMeta& meta;
  // Prints the `load` line (program, method, load times, outputs) with the mode's `inputs`.
  std::function<void(const std::string& inputs_json)> emit_load;
  // Drops what the ETDump recorded so far, e.g. the warm-up (nothing without --etdump).
  std::function<void()> reset_etdump;
};

// What the `summary` line says about the mode's run; main.cpp adds memory and the ETDump.
struct Summary {
  std::string mode;  // the line's "mode" ("": no key, a plain forward run)
  int64_t iterations = 0;
  int64_t warmup = 0;
  int64_t timed_total_ns = 0;
  std::string outputs_json = "[]";
};

class Mode {
 public:
  virtual ~Mode() = default;

  // Its --help lines ("edgerun-runner --model PATH ...", continuation lines indented by 9).
  virtual std::string usage() const = 0;
  // Takes the current flag when it is this mode's (*problem: its value is bad); false otherwise.
  virtual bool parse_flag(Args& args, std::string* problem) = 0;
  // Whether the command line chose this mode.
  virtual bool chosen() const = 0;
  // Whether flags saying where this mode's data comes from or goes were given (another mode
  // refuses them).
  virtual bool data_flags_given() const { return chosen(); }

  // After parsing, in this order: check_flags of every mode (its own flags among themselves); then,
  // row by row of kModes, check_unchosen (this mode's flags given without it) until the chosen
  // mode's check_chosen (others_data: another mode's data flags were given; it may settle defaults
  // of the common flags). Each returns "" or the usage problem.
  virtual std::string check_flags() const { return ""; }
  virtual std::string check_unchosen() const { return ""; }
  virtual std::string check_chosen(CommonOptions& common, bool others_data) = 0;

  // --threads auto, before anything is loaded: the trial as the header's `threads_auto` JSON
  // ("null": no trial; a mode without one treats auto as the library default). forward.cpp times
  // forwards, llm.cpp decode steps; both keep the pool by runner_common's choose_pool.
  virtual std::string choose_threads(const CommonOptions& /*common*/) { return "null"; }
  // Runs on the loaded method and prints the mode's lines; failures go through fail().
  virtual Summary run(Loaded& loaded) = 0;
};

std::unique_ptr<Mode> make_forward_mode();  // forward.cpp: time the method (and --input-batch)
std::unique_ptr<Mode> make_llm_mode();      // llm.cpp: --llm generate|score
std::unique_ptr<Mode> make_train_mode();    // train.cpp: --train

}  // namespace edgerun
