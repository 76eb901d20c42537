// edgerun-runner: load an ExecuTorch program, run it W+N times, say truthfully how it ran.
//
// Output is the JSON-lines protocol of PROTOCOL.md (stdout); ExecuTorch's log goes to stderr.
// No torch, no Python: this is what runs on the device.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/core/error.h>
#include <executorch/runtime/platform/runtime.h>

#include "json_out.h"
#include "llm.h"
#include "train.h"
#include "npy.h"
#include "runner_common.h"
#include "runner_info.h"
#include "threadpool_api.h"

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::MethodMeta;
using executorch::runtime::Tag;
using executorch::runtime::TensorInfo;
using edgerun::Clock;
using edgerun::describe_tensors;
using edgerun::dtype_text;
using edgerun::error_name;
using edgerun::fail;
using edgerun::kExitExecute;
using edgerun::kExitInput;
using edgerun::kExitLoad;
using edgerun::kExitOutput;
using edgerun::kExitUsage;
using edgerun::ns_between;
using edgerun::parse_double;
using edgerun::parse_int;
using edgerun::read_file;
using edgerun::shape_text;
using edgerun::to_vec;

// ---------------------------------------------------------------------------------------------
// Command line.

struct Options {
  std::string model;
  std::string method = "forward";
  std::vector<std::string> inputs;
  std::string fill = "random";
  uint64_t seed = 0;
  int64_t warmup = 1;
  int64_t iterations = 10;
  int64_t min_time_ms = 0;
  int64_t max_iterations = 100000;
  int64_t threads = 0;
  bool threads_auto = false;     // --threads auto: measure 1 and all cores, keep the faster
  std::string xnn_workspace;     // "" = the library's default; disabled | per-model | global
  std::string xnn_weight_cache;  // "" = the library's default; on | off
  std::string etdump;
  std::string output_dir;
  std::string input_batch;   // stacked .npy: [N, *input_shape] of the method's single input
  std::string batch_output;  // stacked .npy of output 0: [N, *output_shape]
  std::string load_mode = "mmap";
  bool list_kernels = false;
  bool version = false;
  bool help = false;
  bool verbose = false;
  bool warmup_given = false;
  std::string tokens_file;
  edgerun::LlmOptions llm;
  edgerun::TrainOptions train;
};

const char* kUsage =
    "usage: edgerun-runner --model PATH [--method NAME] [--input PATH]... [--fill zeros|ones|random]\n"
    "         [--seed N] [--warmup W] [--iterations N] [--min-time-ms T] [--max-iterations M]\n"
    "         [--threads T|auto] [--etdump PATH] [--output-dir DIR] [--load-mode mmap|file] [--verbose]\n"
    "         [--input-batch PATH.npy --batch-output PATH.npy]\n"
    "         [--xnnpack-workspace disabled|per-model|global] [--xnnpack-weight-cache on|off]\n"
    "       edgerun-runner --model PATH --llm generate (--prompt-ids 1,2,3 | --tokens FILE | --random-prompt P)\n"
    "         [--max-new-tokens N] [--stop-id ID]... [--ignore-stop] [--temperature T] [--top-k K]\n"
    "         [--top-p P] [--seed N] [--warmup W] [--repeat R] [--threads T] [--etdump PATH]\n"
    "       edgerun-runner --model PATH --llm score (--prompt-ids ... | --tokens FILE) [--window W]\n"
    "         [--logprobs PATH.npy]\n"
    "       edgerun-runner --model TRAIN.pte --train --data X.npy --labels Y.npy [--eval-data X.npy\n"
    "         --eval-labels Y.npy] [--steps N] [--lr LR] [--optimizer sgd|adamw] [--momentum M]\n"
    "         [--weight-decay WD] [--grad-accum K] [--lr-schedule constant|cosine] [--warmup-steps W]\n"
    "         [--log-every K] [--eval-every E] [--checkpoint PATH [--checkpoint-every K]] [--resume PATH]\n"
    "         [--weights-out DIR] [--no-shuffle] [--stop-at STEP] [--seed N] [--threads T]\n"
    "         [--mezo --weights-in DIR [--mezo-eps E]]  (zeroth-order: a weights-as-inputs forward program)\n"
    "       edgerun-runner --list-kernels | --version | --help\n"
    "Prints JSON lines on stdout (see PROTOCOL.md); exit codes: 2 usage, 10 load, 11 input,\n"
    "12 execute, 13 output.\n";

// Returns "" on success, else the usage problem.
std::string parse_args(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::string value;
    size_t eq = flag.find('=');
    bool has_inline = flag.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_inline) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    }
    auto need = [&](std::string* dst) -> bool {
      if (has_inline) {
        *dst = value;
        return true;
      }
      if (i + 1 >= argc) return false;
      *dst = argv[++i];
      return true;
    };
    auto need_int = [&](int64_t lo, int64_t* dst) -> std::string {
      std::string v;
      if (!need(&v)) return flag + " needs a value";
      if (!parse_int(v, lo, dst))
        return flag + " needs an integer >= " + std::to_string(lo) + ", got '" + v + "'";
      return "";
    };
    std::string problem;
    if (flag == "--model") {
      if (!need(&o->model)) return "--model needs a path";
    } else if (flag == "--method") {
      if (!need(&o->method)) return "--method needs a name";
    } else if (flag == "--input") {
      std::string v;
      if (!need(&v)) return "--input needs a path";
      o->inputs.push_back(v);
    } else if (flag == "--fill") {
      if (!need(&o->fill)) return "--fill needs zeros, ones or random";
      if (o->fill != "zeros" && o->fill != "ones" && o->fill != "random")
        return "--fill must be zeros, ones or random, got '" + o->fill + "'";
    } else if (flag == "--seed") {
      int64_t s = 0;
      problem = need_int(0, &s);
      o->seed = static_cast<uint64_t>(s);
    } else if (flag == "--warmup") {
      problem = need_int(0, &o->warmup);
      o->warmup_given = true;
    } else if (flag == "--train") {
      o->train.enabled = true;
    } else if (flag == "--mezo") {
      o->train.algorithm = "mezo";
    } else if (flag == "--mezo-eps") {
      std::string v;
      if (!need(&v) || !parse_double(v, 1e-12, 1.0, &o->train.mezo_eps))
        return "--mezo-eps needs a number in (0, 1], got '" + v + "'";
    } else if (flag == "--weights-in") {
      if (!need(&o->train.weights_in) || o->train.weights_in.empty()) return "--weights-in needs a directory";
    } else if (flag == "--no-shuffle") {
      o->train.shuffle = false;
    } else if (flag == "--data" || flag == "--labels" || flag == "--eval-data" || flag == "--eval-labels" ||
               flag == "--checkpoint" || flag == "--resume" || flag == "--weights-out") {
      std::string* dst = flag == "--data" ? &o->train.data : flag == "--labels" ? &o->train.labels
                         : flag == "--eval-data" ? &o->train.eval_data : flag == "--eval-labels" ? &o->train.eval_labels
                         : flag == "--checkpoint" ? &o->train.checkpoint : flag == "--resume" ? &o->train.resume
                         : &o->train.weights_out;
      if (!need(dst) || dst->empty()) return flag + " needs a path";
    } else if (flag == "--steps") {
      problem = need_int(1, &o->train.steps);
    } else if (flag == "--stop-at") {
      problem = need_int(1, &o->train.stop_at);
    } else if (flag == "--grad-accum") {
      problem = need_int(1, &o->train.grad_accum);
    } else if (flag == "--log-every") {
      problem = need_int(1, &o->train.log_every);
    } else if (flag == "--eval-every") {
      problem = need_int(0, &o->train.eval_every);
    } else if (flag == "--checkpoint-every") {
      problem = need_int(0, &o->train.checkpoint_every);
    } else if (flag == "--warmup-steps") {
      problem = need_int(0, &o->train.warmup_steps);
    } else if (flag == "--lr" || flag == "--momentum" || flag == "--weight-decay") {
      std::string v;
      if (!need(&v)) return flag + " needs a number";
      double* dst = flag == "--lr" ? &o->train.lr : flag == "--momentum" ? &o->train.momentum : &o->train.weight_decay;
      double hi = flag == "--momentum" ? 0.999999 : 1e6;
      if (!parse_double(v, flag == "--lr" ? 1e-12 : 0.0, hi, dst))
        return flag + " needs a number in " + (flag == "--lr" ? "(0, 1e6]" : flag == "--momentum" ? "[0, 1)" : "[0, 1e6]") +
               ", got '" + v + "'";
    } else if (flag == "--optimizer") {
      if (!need(&o->train.optimizer)) return "--optimizer needs sgd or adamw";
      if (o->train.optimizer != "sgd" && o->train.optimizer != "adamw")
        return "--optimizer must be sgd or adamw, got '" + o->train.optimizer + "'";
    } else if (flag == "--lr-schedule") {
      if (!need(&o->train.schedule)) return "--lr-schedule needs constant or cosine";
      if (o->train.schedule != "constant" && o->train.schedule != "cosine")
        return "--lr-schedule must be constant or cosine, got '" + o->train.schedule + "'";
    } else if (flag == "--llm") {
      if (!need(&o->llm.mode)) return "--llm needs generate or score";
      if (o->llm.mode != "generate" && o->llm.mode != "score")
        return "--llm must be generate or score, got '" + o->llm.mode + "'";
    } else if (flag == "--prompt-ids") {
      std::string v, why;
      if (!need(&v)) return "--prompt-ids needs comma-separated token ids";
      if (!edgerun::parse_ids(v, &o->llm.prompt, &why)) return "--prompt-ids: " + why;
      o->llm.tokens_source = "prompt-ids";
    } else if (flag == "--tokens") {
      if (!need(&o->tokens_file)) return "--tokens needs a file of token ids";
    } else if (flag == "--random-prompt") {
      problem = need_int(1, &o->llm.random_prompt);
    } else if (flag == "--max-new-tokens") {
      problem = need_int(1, &o->llm.max_new_tokens);
    } else if (flag == "--stop-id") {
      int64_t id = 0;
      problem = need_int(0, &id);
      o->llm.stop_ids.push_back(id);
    } else if (flag == "--ignore-stop") {
      o->llm.ignore_stop = true;
    } else if (flag == "--temperature" || flag == "--top-p") {
      std::string v;
      if (!need(&v)) return flag + " needs a number";
      bool temp = flag == "--temperature";
      if (!parse_double(v, temp ? 0.0 : 1e-9, temp ? 1e6 : 1.0, temp ? &o->llm.temperature : &o->llm.top_p))
        return flag + (temp ? " needs a number >= 0" : " needs a number in (0, 1]") + ", got '" + v + "'";
    } else if (flag == "--top-k") {
      problem = need_int(0, &o->llm.top_k);
    } else if (flag == "--repeat") {
      problem = need_int(1, &o->llm.repeat);
    } else if (flag == "--window") {
      problem = need_int(1, &o->llm.window);
    } else if (flag == "--logprobs") {
      if (!need(&o->llm.logprobs_path)) return "--logprobs needs a .npy path";
    } else if (flag == "--iterations") {
      problem = need_int(0, &o->iterations);  // 0 only with --input-batch (checked below)
    } else if (flag == "--min-time-ms") {
      problem = need_int(0, &o->min_time_ms);
    } else if (flag == "--max-iterations") {
      problem = need_int(1, &o->max_iterations);
    } else if (flag == "--threads") {
      std::string v;
      if (!need(&v)) return "--threads needs a count or auto";
      if (v == "auto") {
        o->threads_auto = true;
      } else if (!parse_int(v, 0, &o->threads)) {
        return "--threads needs an integer >= 0 or auto, got '" + v + "'";
      }
    } else if (flag == "--xnnpack-workspace") {
      if (!need(&o->xnn_workspace)) return "--xnnpack-workspace needs disabled, per-model or global";
      if (o->xnn_workspace != "disabled" && o->xnn_workspace != "per-model" && o->xnn_workspace != "global")
        return "--xnnpack-workspace must be disabled, per-model or global, not '" + o->xnn_workspace + "'";
    } else if (flag == "--xnnpack-weight-cache") {
      if (!need(&o->xnn_weight_cache)) return "--xnnpack-weight-cache needs on or off";
      if (o->xnn_weight_cache != "on" && o->xnn_weight_cache != "off")
        return "--xnnpack-weight-cache must be on or off, not '" + o->xnn_weight_cache + "'";
    } else if (flag == "--etdump") {
      if (!need(&o->etdump)) return "--etdump needs a path";
    } else if (flag == "--output-dir") {
      if (!need(&o->output_dir)) return "--output-dir needs a directory";
    } else if (flag == "--input-batch") {
      if (!need(&o->input_batch)) return "--input-batch needs a .npy path";
    } else if (flag == "--batch-output") {
      if (!need(&o->batch_output)) return "--batch-output needs a .npy path";
    } else if (flag == "--load-mode") {
      if (!need(&o->load_mode)) return "--load-mode needs mmap or file";
      if (o->load_mode != "mmap" && o->load_mode != "file")
        return "--load-mode must be mmap or file, got '" + o->load_mode + "'";
    } else if (flag == "--list-kernels") {
      o->list_kernels = true;
    } else if (flag == "--version") {
      o->version = true;
    } else if (flag == "--verbose") {
      o->verbose = true;
    } else if (flag == "--help" || flag == "-h") {
      o->help = true;
    } else {
      return "unknown argument '" + std::string(argv[i]) + "'";
    }
    if (!problem.empty()) return problem;
  }
  if (o->model.empty() && !o->list_kernels && !o->version && !o->help)
    return "--model is required";
  if (o->input_batch.empty() != o->batch_output.empty())
    return "--input-batch and --batch-output go together (one was given without the other)";
  const bool llm = !o->llm.mode.empty();
  const auto& tr = o->train;
  const bool train_flags = !tr.data.empty() || !tr.labels.empty() || !tr.eval_data.empty() || !tr.eval_labels.empty() ||
                           !tr.checkpoint.empty() || !tr.resume.empty() || !tr.weights_out.empty();
  if (!tr.enabled && train_flags) return "--data, --labels, --eval-*, --checkpoint, --resume and --weights-out need --train";
  if (tr.enabled) {
    if (llm || !o->inputs.empty() || !o->input_batch.empty() || !o->output_dir.empty() || !o->etdump.empty())
      return "--train takes its data from --data/--labels; --llm, --input, --input-batch, --output-dir and --etdump "
             "do not apply";
    if (tr.data.empty() || tr.labels.empty()) return "--train needs --data X.npy and --labels Y.npy";
    if (tr.eval_data.empty() != tr.eval_labels.empty()) return "--eval-data and --eval-labels go together";
    if (tr.checkpoint_every > 0 && tr.checkpoint.empty()) return "--checkpoint-every needs --checkpoint PATH";
    return "";
  }
  const int sources = (o->llm.tokens_source == "prompt-ids") + !o->tokens_file.empty() + (o->llm.random_prompt > 0);
  if (!llm && (sources || !o->llm.stop_ids.empty() || o->llm.ignore_stop || !o->llm.logprobs_path.empty() ||
               o->llm.window))
    return "--prompt-ids, --tokens, --random-prompt, --stop-id, --ignore-stop, --window and --logprobs need "
           "--llm generate|score";
  if (llm && (!o->inputs.empty() || !o->input_batch.empty() || !o->output_dir.empty()))
    return "--llm takes its tokens from --prompt-ids/--tokens/--random-prompt; --input, --input-batch and "
           "--output-dir do not apply";
  if (llm && sources > 1) return "give the tokens once: --prompt-ids, --tokens or --random-prompt";
  if (llm && sources == 0)
    return "--llm " + o->llm.mode + " needs token ids: --prompt-ids 1,2,3, --tokens FILE" +
           (o->llm.mode == "generate" ? " or --random-prompt P" : "");
  if (llm && o->llm.mode == "score" && o->llm.random_prompt > 0)
    return "--llm score scores given text: --prompt-ids or --tokens, not --random-prompt";
  if (llm && !o->warmup_given) o->warmup = 0;  // a generation is its own warm-up unit; ask for one
  if (o->iterations == 0 && o->input_batch.empty() && !llm)
    return "--iterations needs an integer >= 1, got '0' (0 is allowed only with --input-batch)";
  if (!o->input_batch.empty() && !o->etdump.empty())
    return "--input-batch cannot be combined with --etdump: the ETDump would record the batch's executions "
           "too; time and profile in one invocation, run the batch in another";
  return "";
}

executorch::extension::threadpool::ThreadPool* pool() {
  return executorch::extension::threadpool::get_threadpool();
}

void fill_bytes(std::vector<uint8_t>* data, ScalarType t, const std::string& fill, std::mt19937_64* rng) {
  size_t esize = executorch::runtime::elementSize(t);
  size_t n = data->size() / esize;
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(0, 9);
  for (size_t i = 0; i < n; ++i) {
    void* p = data->data() + i * esize;
    double v = fill == "zeros" ? 0.0 : fill == "ones" ? 1.0 : -1.0;
    switch (t) {
      case ScalarType::Float: *static_cast<float*>(p) = v < 0 ? unit(*rng) : static_cast<float>(v); break;
      case ScalarType::Double: *static_cast<double*>(p) = v < 0 ? unit(*rng) : v; break;
      case ScalarType::Bool: *static_cast<uint8_t*>(p) = v < 0 ? small(*rng) % 2 : static_cast<uint8_t>(v); break;
      case ScalarType::Byte: *static_cast<uint8_t*>(p) = v < 0 ? small(*rng) : static_cast<uint8_t>(v); break;
      case ScalarType::Char: *static_cast<int8_t*>(p) = v < 0 ? small(*rng) : static_cast<int8_t>(v); break;
      case ScalarType::Short: *static_cast<int16_t*>(p) = v < 0 ? small(*rng) : static_cast<int16_t>(v); break;
      case ScalarType::Int: *static_cast<int32_t*>(p) = v < 0 ? small(*rng) : static_cast<int32_t>(v); break;
      case ScalarType::Long: *static_cast<int64_t*>(p) = v < 0 ? small(*rng) : static_cast<int64_t>(v); break;
      default: break;  // rejected before we get here
    }
  }
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


// ---------------------------------------------------------------------------------------------
// Inputs.

struct PreparedInput {
  TensorPtr tensor;
  std::string source;
  std::vector<int64_t> shape;
  ScalarType dtype;
  size_t nbytes;
};

PreparedInput prepare_input(size_t index, const TensorInfo& info, const Options& o,
                            std::mt19937_64* rng) {
  PreparedInput in;
  in.shape = to_vec(info.sizes());
  in.dtype = info.scalar_type();
  in.nbytes = info.nbytes();
  const std::string where = "input " + std::to_string(index);
  if (edgerun::npy_descr(in.dtype).empty())
    fail("input", kExitInput, Error::NotSupported,
         where + " has dtype " + executorch::runtime::toString(in.dtype) +
             ", which edgerun-runner cannot read or generate");
  auto dim_order = info.dim_order();
  for (size_t d = 0; d < dim_order.size(); ++d) {
    if (dim_order[d] != d)
      fail("input", kExitInput, Error::NotSupported,
           where + " expects a non-contiguous dim order (e.g. channels-last); only contiguous "
                   "inputs are supported");
  }
  std::vector<uint8_t> data;
  if (o.inputs.empty()) {
    data.assign(in.nbytes, 0);
    fill_bytes(&data, in.dtype, o.fill, rng);
    in.source = "fill:" + o.fill;
  } else {
    const std::string& path = o.inputs[index];
    in.source = "file:" + path;
    std::string why;
    std::vector<uint8_t> bytes;
    if (!read_file(path, &bytes, &why)) fail("input", kExitInput, Error::AccessFailed, where + ": " + why);
    if (edgerun::looks_like_npy(bytes)) {
      edgerun::NpyArray arr;
      if (!edgerun::parse_npy(bytes, &arr, &why))
        fail("input", kExitInput, Error::InvalidArgument, where + " (" + path + "): " + why);
      if (arr.dtype != in.dtype)
        fail("input", kExitInput, Error::InvalidArgument,
             where + " (" + path + ") has dtype " + dtype_text(arr.dtype) + ", the method expects " +
                 dtype_text(in.dtype));
      // A smaller shape of the same rank is what a dynamic input takes (the metadata holds its
      // upper bound); a static input refuses it at set_inputs, which says so.
      bool within = arr.shape.size() == in.shape.size();
      for (size_t d = 0; within && d < arr.shape.size(); ++d) within = arr.shape[d] >= 0 && arr.shape[d] <= in.shape[d];
      if (!within)
        fail("input", kExitInput, Error::InvalidArgument,
             where + " (" + path + ") has shape " + shape_text(arr.shape) + ", the method expects " +
                 shape_text(in.shape) + " (a dynamic input: at most that in every dimension)");
      in.shape = arr.shape;
      in.nbytes = arr.data.size();
      data = std::move(arr.data);
    } else {
      if (bytes.size() != in.nbytes)
        fail("input", kExitInput, Error::InvalidArgument,
             where + " (" + path + ") is a raw file of " + std::to_string(bytes.size()) +
                 " bytes; the method expects " + std::to_string(in.nbytes) + " bytes (" +
                 dtype_text(in.dtype) + " " + shape_text(in.shape) + ")");
      data = std::move(bytes);
    }
  }
  std::vector<executorch::aten::SizesType> sizes(in.shape.begin(), in.shape.end());
  in.tensor = executorch::extension::make_tensor_ptr(std::move(sizes), std::move(data), in.dtype);
  return in;
}

// --input-batch: N samples of the method's single input, stacked on a new leading dim.
struct BatchInput {
  edgerun::NpyArray array;
  std::vector<int64_t> sample_shape;
  ScalarType dtype = ScalarType::Float;
  int64_t samples = 0;
  size_t sample_bytes = 0;
};

BatchInput read_batch(const Options& o, const MethodMeta& meta) {
  const std::string where = "--input-batch (" + o.input_batch + ")";
  if (meta.num_inputs() != 1)
    fail("input", kExitInput, Error::InvalidArgument,
         where + ": method " + o.method + " takes " + std::to_string(meta.num_inputs()) +
             " inputs; a batch feeds a method with exactly one tensor input");
  auto info = meta.input_tensor_meta(0);
  if (!info.ok()) fail("input", kExitInput, info.error(), "cannot read the metadata of input 0");
  BatchInput b;
  b.sample_shape = to_vec(info->sizes());
  b.dtype = info->scalar_type();
  b.sample_bytes = info->nbytes();
  std::string why;
  std::vector<uint8_t> bytes;
  if (!read_file(o.input_batch, &bytes, &why)) fail("input", kExitInput, Error::AccessFailed, where + ": " + why);
  if (!edgerun::looks_like_npy(bytes))
    fail("input", kExitInput, Error::InvalidArgument, where + " is not a .npy file (bad magic)");
  if (!edgerun::parse_npy(bytes, &b.array, &why))
    fail("input", kExitInput, Error::InvalidArgument, where + ": " + why);
  if (b.array.dtype != b.dtype)
    fail("input", kExitInput, Error::InvalidArgument,
         where + " has dtype " + dtype_text(b.array.dtype) + ", input 0 of method " + o.method + " expects " +
             dtype_text(b.dtype));
  const auto& shape = b.array.shape;
  bool fits = shape.size() == b.sample_shape.size() + 1 && shape[0] >= 1 &&
              std::equal(b.sample_shape.begin(), b.sample_shape.end(), shape.begin() + 1);
  if (!fits) {
    std::string want = "[N";
    for (int64_t d : b.sample_shape) want += "," + std::to_string(d);
    fail("input", kExitInput, Error::InvalidArgument,
         where + " has shape " + shape_text(shape) + "; expected " + want + "] with N >= 1: N samples of input 0, " +
             "each exactly the method's input shape " + shape_text(b.sample_shape));
  }
  b.samples = shape[0];
  return b;
}

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

}  // namespace

// --threads auto (plain runs): time the program with every core and with one, each in a fresh
// Module on zero-filled inputs, and keep the faster pool. Small programs often lose more to thread
// synchronisation than they gain (measured here: a 0.2 ms text encoder ran 1.5x slower on two
// threads than on one, ResNet-18 1.9x faster). Returns the trial as JSON ("null" when no trial ran:
// one core, or the program cannot be loaded or fed here -- the run itself then reports why).
std::string choose_threads(const Options& o) {
  auto* p = pool();
  if (p == nullptr) return "null";
  const uint32_t all = static_cast<uint32_t>(p->get_thread_count());
  if (all <= 1) return "null";
  Options trial = o;
  trial.inputs.clear();
  trial.fill = "zeros";
  std::vector<std::pair<uint32_t, int64_t>> medians;
  for (uint32_t c : {all, 1u}) {
    if (!p->_unsafe_reset_threadpool(c)) return "null";
    Module m(o.model, Module::LoadMode::Mmap);
    if (m.load() != Error::Ok || m.load_method(o.method) != Error::Ok) return "null";
    auto meta = m.method_meta(o.method);
    if (!meta.ok()) return "null";
    std::vector<PreparedInput> prepared;
    std::vector<EValue> values;
    std::mt19937_64 rng(0);
    for (size_t i = 0; i < meta->num_inputs(); ++i) {
      auto tag = meta->input_tag(i);
      auto info = meta->input_tensor_meta(i);
      if (!tag.ok() || *tag != Tag::Tensor || !info.ok() || edgerun::npy_descr(info->scalar_type()).empty())
        return "null";
      auto order = info->dim_order();
      for (size_t d = 0; d < order.size(); ++d)
        if (order[d] != d) return "null";
      prepared.push_back(prepare_input(i, *info, trial, &rng));
      values.emplace_back(prepared.back().tensor);
    }
    std::vector<int64_t> ns;
    int64_t total = 0;
    // two warm-ups, then at least 5 and up to 50 runs or ~100 ms, whichever comes first
    for (int k = 0; k < 52 && (k < 7 || total < 100000000); ++k) {
      if (m.set_inputs(o.method, values) != Error::Ok) return "null";
      auto t0 = Clock::now();
      if (!m.execute(o.method).ok()) return "null";
      int64_t d = ns_between(t0, Clock::now());
      if (k >= 2) {
        ns.push_back(d);
        total += d;
      }
    }
    std::nth_element(ns.begin(), ns.begin() + ns.size() / 2, ns.end());
    medians.emplace_back(c, ns[ns.size() / 2]);
  }
  // fewer threads unless more are at least 5 % faster: a spinning pool also costs the neighbours
  uint32_t chosen = medians[1].second <= medians[0].second * 105 / 100 ? medians[1].first : medians[0].first;
  if (!p->_unsafe_reset_threadpool(chosen)) return "null";
  std::string trials = "[";
  for (size_t i = 0; i < medians.size(); ++i)
    trials += (i ? "," : "") + edgerun::JsonLine()
                                   .num("threads", static_cast<int64_t>(medians[i].first))
                                   .num("median_ns", medians[i].second)
                                   .text();
  return edgerun::JsonLine().num("chosen", static_cast<int64_t>(chosen)).raw("trials", trials + "]").text();
}

int main(int argc, char** argv) {
  executorch::runtime::runtime_init();
  edgerun::capture_executorch_log();

  Options o;
  std::string usage_problem = parse_args(argc, argv, &o);
  edgerun::set_verbose_log(o.verbose);
  if (o.help) {
    std::fputs(kUsage, stderr);
    return 0;
  }
  // The pool is resized before anything is loaded: an XNNPACK runtime keeps the pool it was
  // created with, so resizing later would leave it pointing at a destroyed one.
  if (usage_problem.empty() && o.threads > 0) {
    auto* p = pool();
    if (p == nullptr || !p->_unsafe_reset_threadpool(static_cast<uint32_t>(o.threads)))
      usage_problem = "could not resize the thread pool to " + std::to_string(o.threads) + " threads";
  }
  // XNNPACK's process-wide backend options (keys of backends/xnnpack/runtime/XNNPACKBackend.h),
  // set before any program is loaded: a delegate reads them when it is initialised.
  if (usage_problem.empty() && (!o.xnn_workspace.empty() || !o.xnn_weight_cache.empty())) {
    executorch::runtime::runtime_init();
    executorch::runtime::BackendOptions<2> xnn;
    if (!o.xnn_workspace.empty())
      xnn.set_option("workspace_sharing_mode",
                     o.xnn_workspace == "disabled" ? 0 : o.xnn_workspace == "per-model" ? 1 : 2);
    if (!o.xnn_weight_cache.empty()) xnn.set_option("weight_cache_enabled", o.xnn_weight_cache == "on");
    Error e = executorch::runtime::set_option("XnnpackBackend", xnn.view());
    if (e != Error::Ok)
      usage_problem = "cannot set the XNNPACK backend options (" + error_name(e) +
                      "): this runner has no XNNPACK backend, or its XNNPACK predates these options";
  }
  std::string threads_auto = "null";
  if (usage_problem.empty() && o.threads_auto && o.llm.mode.empty() && !o.train.enabled && !o.version &&
      !o.list_kernels && !o.model.empty())
    threads_auto = choose_threads(o);
  edgerun::print_header(threads_auto);
  if (!usage_problem.empty()) {
    std::fputs(kUsage, stderr);
    fail("usage", kExitUsage, Error::InvalidArgument, usage_problem);
  }
  if (o.version) return 0;
  if (o.list_kernels) {
    edgerun::print_kernels();
    return 0;
  }

  // ---- load ------------------------------------------------------------------------------
  struct stat sb;
  if (::stat(o.model.c_str(), &sb) != 0)
    fail("load", kExitLoad, Error::AccessFailed,
         "cannot open program " + o.model + ": " + std::strerror(errno));

  executorch::etdump::ETDumpGen* etdump = nullptr;
  std::unique_ptr<executorch::runtime::EventTracer> tracer;
  if (!o.etdump.empty()) {
    auto gen = std::make_unique<executorch::etdump::ETDumpGen>();
    etdump = gen.get();
    tracer = std::move(gen);
  }
  Module module(o.model, o.load_mode == "mmap" ? Module::LoadMode::Mmap : Module::LoadMode::File,
                std::move(tracer));

  auto t0 = Clock::now();
  Error err = module.load(executorch::runtime::Program::Verification::InternalConsistency);
  auto t1 = Clock::now();
  if (err != Error::Ok)
    fail("load", kExitLoad, err,
         "cannot load program " + o.model + " (" + error_name(err) +
             "): the file is not a valid .pte for this runtime (corrupt, truncated, or written by "
             "an incompatible ExecuTorch version)");

  auto names = module.method_names();
  if (!names.ok()) fail("load", kExitLoad, names.error(), "cannot list the methods of " + o.model);
  if (names->count(o.method) == 0) {
    std::vector<std::string> have(names->begin(), names->end());
    std::sort(have.begin(), have.end());
    std::string list;
    for (const auto& n : have) list += (list.empty() ? "" : ", ") + n;
    fail("load", kExitLoad, Error::NotFound,
         "program " + o.model + " has no method '" + o.method + "' (it has: " + list + ")");
  }
  auto meta_res = module.method_meta(o.method);
  if (!meta_res.ok()) fail("load", kExitLoad, meta_res.error(), "cannot read metadata of method " + o.method);
  MethodMeta meta = *meta_res;

  auto t2 = Clock::now();
  err = module.load_method(o.method);
  auto t3 = Clock::now();
  if (err != Error::Ok) {
    std::string hint;
    if (err == Error::OperatorMissing)
      hint = ": an operator the program uses is not registered in this runner (see the log for its "
             "name; a bundle with the kernel library that provides it is needed)";
    else if (err == Error::NotFound)
      hint = ": a delegate backend the program uses may not be linked into this runner";
    fail("load", kExitLoad, err, "load_method(" + o.method + ") failed with " + error_name(err) + hint);
  }

  // The `load` line of every mode: the program, the method, load times and the tensors' metadata.
  auto emit_load = [&](const std::string& inputs_json, const std::string& outputs_json = "") {
    edgerun::JsonLine()
        .str("type", "load")
        .str("program", o.model)
        .str("method", o.method)
        .str("load_mode", o.load_mode)
        .num("program_load_ns", ns_between(t0, t1))
        .num("method_load_ns", ns_between(t2, t3))
        .num("load_ns", ns_between(t0, t1) + ns_between(t2, t3))
        .raw("inputs", inputs_json)
        .raw("outputs", outputs_json.empty() ? describe_tensors(meta, false, "") : outputs_json)
        .emit();
  };

  // ---- train mode: optimizer steps on the device --------------------------------------------
  if (o.train.enabled) {
    emit_load(describe_tensors(meta, true, "train"));
    auto l0 = Clock::now();
    int64_t steps = edgerun::run_train(module, o.method, o.train, o.seed);
    int64_t total_ns = ns_between(l0, Clock::now());
    ProcStatus st = read_proc_status();
    edgerun::JsonLine()
        .str("type", "summary")
        .str("mode", "train")
        .num("iterations", steps)
        .num("warmup", 0)
        .num("timed_total_ns", total_ns)
        .num_or_null("peak_rss_kb", st.vm_hwm_kb, st.present)
        .num_or_null("rss_kb", st.vm_rss_kb, st.present)
        .raw("outputs", "[]")
        .raw("etdump", "null")
        .emit();
    std::fflush(stdout);
    return 0;
  }

  // ---- LLM mode: tokens in, tokens (or log-probabilities) out ---------------------------------
  if (!o.llm.mode.empty()) {
    if (!o.tokens_file.empty()) {
      std::vector<uint8_t> bytes;
      std::string why;
      if (!read_file(o.tokens_file, &bytes, &why)) fail("input", kExitInput, Error::AccessFailed, "--tokens: " + why);
      if (!edgerun::parse_ids(std::string(bytes.begin(), bytes.end()), &o.llm.prompt, &why))
        fail("input", kExitInput, Error::InvalidArgument, "--tokens " + o.tokens_file + ": " + why);
      o.llm.tokens_source = "file:" + o.tokens_file;
    }
    emit_load(describe_tensors(meta, true, "llm"));
    auto l0 = Clock::now();
    int64_t reps = edgerun::run_llm(module, o.method, o.llm, o.warmup, o.seed, [&] {
      if (etdump) etdump->reset();
      l0 = Clock::now();
    });
    int64_t timed_ns = ns_between(l0, Clock::now());
    std::string etdump_json = write_etdump(etdump, o.etdump);
    ProcStatus st = read_proc_status();
    edgerun::JsonLine()
        .str("type", "summary")
        .str("mode", "llm-" + o.llm.mode)
        .num("iterations", reps)
        .num("warmup", o.warmup)
        .num("timed_total_ns", timed_ns)
        .num_or_null("peak_rss_kb", st.vm_hwm_kb, st.present)
        .num_or_null("rss_kb", st.vm_rss_kb, st.present)
        .raw("outputs", "[]")
        .raw("etdump", etdump_json)
        .emit();
    std::fflush(stdout);
    return 0;
  }

  // ---- inputs ----------------------------------------------------------------------------
  size_t n_inputs = meta.num_inputs();
  if (!o.inputs.empty() && o.inputs.size() != n_inputs)
    fail("input", kExitInput, Error::InvalidArgument,
         "method " + o.method + " takes " + std::to_string(n_inputs) + " input(s), " +
             std::to_string(o.inputs.size()) + " --input given");
  std::mt19937_64 rng(o.seed);
  std::vector<PreparedInput> prepared;
  std::vector<EValue> input_values;
  std::string inputs_json = "[";
  for (size_t i = 0; i < n_inputs; ++i) {
    auto tag = meta.input_tag(i);
    if (!tag.ok()) fail("input", kExitInput, tag.error(), "cannot read the type of input " + std::to_string(i));
    if (*tag != Tag::Tensor)
      fail("input", kExitInput, Error::NotSupported,
           "input " + std::to_string(i) + " is not a tensor; edgerun-runner feeds tensors only");
    auto info = meta.input_tensor_meta(i);
    if (!info.ok()) fail("input", kExitInput, info.error(), "cannot read the metadata of input " + std::to_string(i));
    prepared.push_back(prepare_input(i, *info, o, &rng));
    const auto& in = prepared.back();
    input_values.emplace_back(in.tensor);
    inputs_json += (i ? "," : "") + edgerun::JsonLine()
                                         .num("index", static_cast<int64_t>(i))
                                         .raw("shape", edgerun::json_int_array(in.shape))
                                         .str("dtype", dtype_text(in.dtype))
                                         .num("nbytes", static_cast<int64_t>(in.nbytes))
                                         .str("source", in.source)
                                         .text();
  }
  inputs_json += "]";
  BatchInput batch;
  if (!o.input_batch.empty()) batch = read_batch(o, meta);
  emit_load(inputs_json);

  // ---- iterations ------------------------------------------------------------------------
  std::vector<EValue> outputs;
  auto run_once = [&](bool warmup, int64_t index) -> int64_t {
    auto w0 = Clock::now();
    Error e = module.set_inputs(o.method, input_values);
    if (e != Error::Ok) {
      // A smaller shape was let through for dynamic inputs; refused, it was a static one: say which.
      for (size_t i = 0; i < prepared.size(); ++i) {
        auto info = meta.input_tensor_meta(i);
        if (info.ok() && to_vec(info->sizes()) != prepared[i].shape)
          fail("input", kExitInput, Error::InvalidArgument,
               "input " + std::to_string(i) + " (" + prepared[i].source + ") has shape " +
                   shape_text(prepared[i].shape) + ", the method expects " + shape_text(to_vec(info->sizes())) +
                   " (the runtime refused the smaller shape: this input is static; only a program exported "
                   "with a dynamic dimension there takes one)");
      }
      fail("input", kExitInput, e,
           "set_inputs(" + o.method + ") failed with " + error_name(e) +
               ": the inputs do not fit the method's input metadata");
    }
    auto e0 = Clock::now();
    auto res = module.execute(o.method);
    auto e1 = Clock::now();
    if (!res.ok())
      fail("execute", kExitExecute, res.error(),
           "execute(" + o.method + ") failed with " + error_name(res.error()) +
               (warmup ? " (warm-up iteration " : " (iteration ") + std::to_string(index) + ")");
    outputs = std::move(*res);
    auto w1 = Clock::now();
    int64_t exec_ns = ns_between(e0, e1);
    edgerun::JsonLine()
        .str("type", "iteration")
        .num("index", index)
        .boolean("warmup", warmup)
        .num("execute_ns", exec_ns)
        .num("wall_ns", ns_between(w0, w1))
        .emit();
    return exec_ns;
  };
  for (int64_t i = 0; i < o.warmup; ++i) run_once(true, i);
  // Everything recorded so far (method init, warm-up) is dropped: the ETDump holds the timed
  // iterations only, one "Execute" block each.
  if (etdump) etdump->reset();
  int64_t timed_total_ns = 0;
  int64_t done = 0;
  const int64_t min_total_ns = o.min_time_ms * 1000000;
  while (done < o.iterations || (timed_total_ns < min_total_ns && done < o.max_iterations)) {
    timed_total_ns += run_once(false, done);
    ++done;
  }

  // ---- outputs ---------------------------------------------------------------------------
  std::string out_json = "[";
  for (size_t j = 0; j < outputs.size(); ++j) {
    edgerun::JsonLine line;
    line.num("index", static_cast<int64_t>(j));
    const EValue& v = outputs[j];
    if (v.isTensor()) {
      const auto& t = v.toTensor();
      std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
      line.raw("shape", edgerun::json_int_array(shape)).str("dtype", dtype_text(t.scalar_type()));
      if (!o.output_dir.empty()) {
        std::string path = o.output_dir + "/output_" + std::to_string(j) + ".npy";
        std::string why;
        ::mkdir(o.output_dir.c_str(), 0755);
        if (!edgerun::write_npy(path, t.scalar_type(), shape, t.const_data_ptr(), t.nbytes(), &why))
          fail("output", kExitOutput, Error::AccessFailed, "output " + std::to_string(j) + ": " + why);
        line.str("path", path);
      } else {
        line.null("path");
      }
    } else {
      const char* kind = v.isInt() ? "int" : v.isDouble() ? "double" : v.isBool() ? "bool" : "other";
      line.null("shape").str("dtype", kind).null("path");
      if (v.isInt()) line.num("value", v.toInt());
      if (v.isBool()) line.boolean("value", v.toBool());
    }
    out_json += (j ? "," : "") + line.text();
  }
  out_json += "]";

  std::string etdump_json = write_etdump(etdump, o.etdump);

  // ---- batch: every sample of --input-batch once, after (never among) the timed iterations --
  if (!o.input_batch.empty()) {
    std::vector<executorch::aten::SizesType> sizes(batch.sample_shape.begin(), batch.sample_shape.end());
    std::vector<uint8_t> stacked;
    std::vector<int64_t> out_shape;
    ScalarType out_dtype = ScalarType::Float;
    int64_t exec_total_ns = 0;
    auto b0 = Clock::now();
    for (int64_t k = 0; k < batch.samples; ++k) {
      const std::string which = "batch sample " + std::to_string(k) + " of " + o.input_batch;
      auto tensor = executorch::extension::from_blob(batch.array.data.data() + k * batch.sample_bytes, sizes,
                                                     batch.dtype);
      std::vector<EValue> values;
      values.emplace_back(tensor);
      Error e = module.set_inputs(o.method, values);
      if (e != Error::Ok)
        fail("input", kExitInput, e, "set_inputs(" + o.method + ") failed with " + error_name(e) + " (" + which + ")");
      auto e0 = Clock::now();
      auto res = module.execute(o.method);
      auto e1 = Clock::now();
      if (!res.ok())
        fail("execute", kExitExecute, res.error(),
             "execute(" + o.method + ") failed with " + error_name(res.error()) + " (" + which + ")");
      exec_total_ns += ns_between(e0, e1);
      if (res->empty() || !(*res)[0].isTensor())
        fail("output", kExitOutput, Error::NotSupported,
             "output 0 of method " + o.method + " is not a tensor; --batch-output stacks tensors only");
      const auto& t = (*res)[0].toTensor();
      std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
      if (k == 0) {
        out_shape = shape;
        out_dtype = t.scalar_type();
        stacked.reserve(t.nbytes() * static_cast<size_t>(batch.samples));
      } else if (shape != out_shape || t.scalar_type() != out_dtype) {
        fail("output", kExitOutput, Error::InvalidArgument,
             "output 0 of " + which + " is " + dtype_text(t.scalar_type()) + " " + shape_text(shape) +
                 ", sample 0's was " + dtype_text(out_dtype) + " " + shape_text(out_shape) +
                 "; outputs of different shapes cannot be stacked");
      }
      const auto* p = static_cast<const uint8_t*>(t.const_data_ptr());
      stacked.insert(stacked.end(), p, p + t.nbytes());
    }
    auto b1 = Clock::now();
    std::vector<int64_t> stacked_shape = {batch.samples};
    stacked_shape.insert(stacked_shape.end(), out_shape.begin(), out_shape.end());
    std::string why;
    if (!edgerun::write_npy(o.batch_output, out_dtype, stacked_shape, stacked.data(), stacked.size(), &why))
      fail("output", kExitOutput, Error::AccessFailed, "--batch-output: " + why);
    edgerun::JsonLine()
        .str("type", "batch")
        .str("input", o.input_batch)
        .num("samples", batch.samples)
        .raw("input_shape", edgerun::json_int_array(batch.array.shape))
        .str("output", o.batch_output)
        .raw("output_shape", edgerun::json_int_array(stacked_shape))
        .str("dtype", dtype_text(out_dtype))
        .num("execute_ns_total", exec_total_ns)
        .num("wall_ns_total", ns_between(b0, b1))
        .emit();
  }

  ProcStatus st = read_proc_status();
  edgerun::JsonLine()
      .str("type", "summary")
      .num("iterations", done)
      .num("warmup", o.warmup)
      .num("timed_total_ns", timed_total_ns)
      .num_or_null("peak_rss_kb", st.vm_hwm_kb, st.present)
      .num_or_null("rss_kb", st.vm_rss_kb, st.present)
      .raw("outputs", out_json)
      .raw("etdump", etdump_json)
      .emit();
  std::fflush(stdout);
  return 0;
}
