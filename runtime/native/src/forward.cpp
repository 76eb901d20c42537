// The runner's default mode: run the method W+N times on given or generated inputs and time every
// iteration, optionally write the outputs, and (--input-batch) run a stacked batch once afterwards.
// Protocol: PROTOCOL.md (`load`, `iteration`, `batch`, `summary`).
#include <sys/stat.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>

#include "json_out.h"
#include "mode.h"
#include "npy.h"
#include "runner_common.h"

namespace edgerun {

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::MethodMeta;
using executorch::runtime::Tag;
using executorch::runtime::TensorInfo;

struct ForwardOptions {
  std::vector<std::string> inputs;
  std::string fill = "random";
  int64_t iterations = 10;
  int64_t min_time_ms = 0;
  int64_t max_iterations = 100000;
  std::string output_dir;
  std::string input_batch;   // stacked .npy: [N, *input_shape] of the method's single input
  std::string batch_output;  // stacked .npy of output 0: [N, *output_shape]
};

// ---------------------------------------------------------------------------------------------
// Inputs.

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

struct PreparedInput {
  TensorPtr tensor;
  std::string source;
  std::vector<int64_t> shape;
  ScalarType dtype;
  size_t nbytes;
};

// An --input file's bytes as input `index` takes them (.npy: dtype and shape checked; raw: size).
std::vector<uint8_t> read_input_file(const std::string& path, const std::string& where, PreparedInput* in) {
  std::string why;
  std::vector<uint8_t> bytes;
  if (!read_file(path, &bytes, &why)) fail("input", kExitInput, Error::AccessFailed, where + ": " + why);
  if (!looks_like_npy(bytes)) {
    if (bytes.size() != in->nbytes)
      fail("input", kExitInput, Error::InvalidArgument,
           where + " (" + path + ") is a raw file of " + std::to_string(bytes.size()) +
               " bytes; the method expects " + std::to_string(in->nbytes) + " bytes (" +
               dtype_text(in->dtype) + " " + shape_text(in->shape) + ")");
    return bytes;
  }
  NpyArray arr;
  if (!parse_npy(bytes, &arr, &why))
    fail("input", kExitInput, Error::InvalidArgument, where + " (" + path + "): " + why);
  if (arr.dtype != in->dtype)
    fail("input", kExitInput, Error::InvalidArgument,
         where + " (" + path + ") has dtype " + dtype_text(arr.dtype) + ", the method expects " +
             dtype_text(in->dtype));
  // A smaller shape of the same rank is what a dynamic input takes (the metadata holds its
  // upper bound); a static input refuses it at set_inputs, which says so.
  bool within = arr.shape.size() == in->shape.size();
  for (size_t d = 0; within && d < arr.shape.size(); ++d) within = arr.shape[d] >= 0 && arr.shape[d] <= in->shape[d];
  if (!within)
    fail("input", kExitInput, Error::InvalidArgument,
         where + " (" + path + ") has shape " + shape_text(arr.shape) + ", the method expects " +
             shape_text(in->shape) + " (a dynamic input: at most that in every dimension)");
  in->shape = arr.shape;
  in->nbytes = arr.data.size();
  return std::move(arr.data);
}

PreparedInput prepare_input(size_t index, const TensorInfo& info, const ForwardOptions& o, std::mt19937_64* rng) {
  PreparedInput in;
  in.shape = to_vec(info.sizes());
  in.dtype = info.scalar_type();
  in.nbytes = info.nbytes();
  const std::string where = "input " + std::to_string(index);
  if (npy_descr(in.dtype).empty())
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
    in.source = "file:" + o.inputs[index];
    data = read_input_file(o.inputs[index], where, &in);
  }
  std::vector<executorch::aten::SizesType> sizes(in.shape.begin(), in.shape.end());
  in.tensor = executorch::extension::make_tensor_ptr(std::move(sizes), std::move(data), in.dtype);
  return in;
}

// --input-batch: N samples of the method's single input, stacked on a new leading dim.
struct BatchInput {
  NpyArray array;
  std::vector<int64_t> sample_shape;
  ScalarType dtype = ScalarType::Float;
  int64_t samples = 0;
  size_t sample_bytes = 0;
};

BatchInput read_batch(const ForwardOptions& o, const std::string& method, const MethodMeta& meta) {
  const std::string where = "--input-batch (" + o.input_batch + ")";
  if (meta.num_inputs() != 1)
    fail("input", kExitInput, Error::InvalidArgument,
         where + ": method " + method + " takes " + std::to_string(meta.num_inputs()) +
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
  if (!looks_like_npy(bytes))
    fail("input", kExitInput, Error::InvalidArgument, where + " is not a .npy file (bad magic)");
  if (!parse_npy(bytes, &b.array, &why))
    fail("input", kExitInput, Error::InvalidArgument, where + ": " + why);
  if (b.array.dtype != b.dtype)
    fail("input", kExitInput, Error::InvalidArgument,
         where + " has dtype " + dtype_text(b.array.dtype) + ", input 0 of method " + method + " expects " +
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

// ---------------------------------------------------------------------------------------------
// --threads auto.

// The median execute time of `method` in a fresh module on zero-filled inputs with the current
// pool: two warm-ups, then at least 5 and up to 50 runs or ~100 ms, whichever comes first.
// -1 when the program cannot be loaded or fed here.
int64_t trial_median_ns(const CommonOptions& c) {
  std::unique_ptr<LazyPlannedMemory> planned;  // outlives m's method
  Module m(c.model, data_files(c), Module::LoadMode::Mmap);
  if (m.load() != Error::Ok || load_method_lazily(m, c.method, &planned) != Error::Ok) return -1;
  auto meta = m.method_meta(c.method);
  if (!meta.ok()) return -1;
  ForwardOptions zeros;
  zeros.fill = "zeros";
  std::vector<PreparedInput> prepared;
  std::vector<EValue> values;
  std::mt19937_64 rng(0);
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto tag = meta->input_tag(i);
    auto info = meta->input_tensor_meta(i);
    if (!tag.ok() || *tag != Tag::Tensor || !info.ok() || npy_descr(info->scalar_type()).empty()) return -1;
    auto order = info->dim_order();
    for (size_t d = 0; d < order.size(); ++d)
      if (order[d] != d) return -1;
    prepared.push_back(prepare_input(i, *info, zeros, &rng));
    values.emplace_back(prepared.back().tensor);
  }
  std::vector<int64_t> ns;
  int64_t total = 0;
  for (int k = 0; k < 52 && (k < 7 || total < 100000000); ++k) {
    if (m.set_inputs(c.method, values) != Error::Ok) return -1;
    auto t0 = Clock::now();
    if (!m.execute(c.method).ok()) return -1;
    int64_t d = ns_between(t0, Clock::now());
    if (k >= 2) {
      ns.push_back(d);
      total += d;
    }
  }
  std::nth_element(ns.begin(), ns.begin() + ns.size() / 2, ns.end());
  return ns[ns.size() / 2];
}

// Small programs often lose more to thread synchronisation than they gain (measured here: a 0.2 ms
// text encoder ran 1.5x slower on two threads than on one, ResNet-18 1.9x faster); the rule is
// runner_common's choose_pool.
std::string choose_forward_pool(const CommonOptions& c) {
  return choose_pool([&] { return trial_median_ns(c); }, [](JsonLine& j) { j.str("measure", "forward"); });
}

// ---------------------------------------------------------------------------------------------
// Outputs.

// The summary's `outputs`: every output of the last iteration (written to --output-dir as .npy).
std::string describe_outputs(const std::vector<EValue>& outputs, const std::string& output_dir) {
  std::string out_json = "[";
  for (size_t j = 0; j < outputs.size(); ++j) {
    JsonLine line;
    line.num("index", static_cast<int64_t>(j));
    const EValue& v = outputs[j];
    if (v.isTensor()) {
      const auto& t = v.toTensor();
      std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
      line.raw("shape", json_int_array(shape)).str("dtype", dtype_text(t.scalar_type()));
      if (!output_dir.empty()) {
        std::string path = output_dir + "/output_" + std::to_string(j) + ".npy";
        std::string why;
        ::mkdir(output_dir.c_str(), 0755);
        if (!write_npy(path, t.scalar_type(), shape, t.const_data_ptr(), t.nbytes(), &why))
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
  return out_json + "]";
}

// ---------------------------------------------------------------------------------------------
// The mode.

class ForwardMode : public Mode {
 public:
  std::string usage() const override {
    return "edgerun-runner --model PATH [--method NAME] [--input PATH]... [--fill zeros|ones|random]\n"
           "         [--seed N] [--warmup W] [--iterations N] [--min-time-ms T] [--max-iterations M]\n"
           "         [--threads T|auto] [--etdump PATH] [--output-dir DIR] [--load-mode mmap|file] [--verbose]\n"
           "         [--input-batch PATH.npy --batch-output PATH.npy]\n"
           "         [--xnnpack-workspace disabled|per-model|global] [--xnnpack-weight-cache on|off]\n"
           "         [--xnnpack-reshape on-change|always]\n";
  }

  bool parse_flag(Args& a, std::string* problem) override {
    const std::string& f = a.flag();
    std::string v;
    if (f == "--input") {
      if (a.value(&v)) o_.inputs.push_back(v);
      else *problem = "--input needs a path";
    } else if (f == "--fill") {
      *problem = a.choice_value({"zeros", "ones", "random"}, "zeros, ones or random", &o_.fill);
    } else if (f == "--iterations") {
      *problem = a.int_value(0, &o_.iterations);  // 0 only with --input-batch (checked below)
    } else if (f == "--min-time-ms") {
      *problem = a.int_value(0, &o_.min_time_ms);
    } else if (f == "--max-iterations") {
      *problem = a.int_value(1, &o_.max_iterations);
    } else if (f == "--output-dir") {
      if (!a.value(&o_.output_dir)) *problem = "--output-dir needs a directory";
    } else if (f == "--input-batch") {
      if (!a.value(&o_.input_batch)) *problem = "--input-batch needs a .npy path";
    } else if (f == "--batch-output") {
      if (!a.value(&o_.batch_output)) *problem = "--batch-output needs a .npy path";
    } else {
      return false;
    }
    return true;
  }

  bool chosen() const override { return true; }  // the default: what runs when no other mode was chosen
  bool data_flags_given() const override {
    return !o_.inputs.empty() || !o_.input_batch.empty() || !o_.output_dir.empty();
  }

  std::string check_flags() const override {
    if (o_.input_batch.empty() != o_.batch_output.empty())
      return "--input-batch and --batch-output go together (one was given without the other)";
    return "";
  }

  std::string check_chosen(CommonOptions& c, bool /*others_data*/) override {
    if (o_.iterations == 0 && o_.input_batch.empty())
      return "--iterations needs an integer >= 1, got '0' (0 is allowed only with --input-batch)";
    if (!o_.input_batch.empty() && !c.etdump.empty())
      return "--input-batch cannot be combined with --etdump: the ETDump would record the batch's executions "
             "too; time and profile in one invocation, run the batch in another";
    return "";
  }

  std::string choose_threads(const CommonOptions& c) override {
    return c.threads_auto ? choose_forward_pool(c) : "null";
  }

  Summary run(Loaded& ld) override {
    const std::string inputs_json = prepare_inputs(ld);
    BatchInput batch;
    if (!o_.input_batch.empty()) batch = read_batch(o_, ld.common.method, ld.meta);
    ld.emit_load(inputs_json);
    Summary s;
    s.warmup = ld.common.warmup;
    for (int64_t i = 0; i < ld.common.warmup; ++i) run_once(ld, true, i);
    // Everything recorded so far (method init, warm-up) is dropped: the ETDump holds the timed
    // iterations only, one "Execute" block each.
    ld.reset_etdump();
    const int64_t min_total_ns = o_.min_time_ms * 1000000;
    while (s.iterations < o_.iterations || (s.timed_total_ns < min_total_ns && s.iterations < o_.max_iterations)) {
      s.timed_total_ns += run_once(ld, false, s.iterations);
      ++s.iterations;
    }
    s.outputs_json = describe_outputs(outputs_, o_.output_dir);
    // every sample of --input-batch once, after (never among) the timed iterations
    if (!o_.input_batch.empty()) run_batch(ld, batch);
    return s;
  }

 private:
  // Prepares every input (from --input files or --fill) and returns the `load` line's `inputs`.
  std::string prepare_inputs(const Loaded& ld) {
    const std::string& method = ld.common.method;
    size_t n_inputs = ld.meta.num_inputs();
    if (!o_.inputs.empty() && o_.inputs.size() != n_inputs)
      fail("input", kExitInput, Error::InvalidArgument,
           "method " + method + " takes " + std::to_string(n_inputs) + " input(s), " +
               std::to_string(o_.inputs.size()) + " --input given");
    std::mt19937_64 rng(ld.common.seed);
    std::string inputs_json = "[";
    for (size_t i = 0; i < n_inputs; ++i) {
      auto tag = ld.meta.input_tag(i);
      if (!tag.ok()) fail("input", kExitInput, tag.error(), "cannot read the type of input " + std::to_string(i));
      if (*tag != Tag::Tensor)
        fail("input", kExitInput, Error::NotSupported,
             "input " + std::to_string(i) + " is not a tensor; edgerun-runner feeds tensors only");
      auto info = ld.meta.input_tensor_meta(i);
      if (!info.ok()) fail("input", kExitInput, info.error(), "cannot read the metadata of input " + std::to_string(i));
      prepared_.push_back(prepare_input(i, *info, o_, &rng));
      const auto& in = prepared_.back();
      values_.emplace_back(in.tensor);
      inputs_json += (i ? "," : "") + JsonLine()
                                          .num("index", static_cast<int64_t>(i))
                                          .raw("shape", json_int_array(in.shape))
                                          .str("dtype", dtype_text(in.dtype))
                                          .num("nbytes", static_cast<int64_t>(in.nbytes))
                                          .str("source", in.source)
                                          .text();
    }
    return inputs_json + "]";
  }

  // One iteration: bind the inputs, execute, keep the outputs; prints its line, returns execute ns.
  int64_t run_once(Loaded& ld, bool warmup, int64_t index) {
    const std::string& method = ld.common.method;
    auto w0 = Clock::now();
    Error e = ld.module.set_inputs(method, values_);
    if (e != Error::Ok) refuse_inputs(ld, e);
    auto e0 = Clock::now();
    auto res = ld.module.execute(method);
    auto e1 = Clock::now();
    if (!res.ok())
      fail("execute", kExitExecute, res.error(),
           "execute(" + method + ") failed with " + error_name(res.error()) +
               (warmup ? " (warm-up iteration " : " (iteration ") + std::to_string(index) + ")");
    outputs_ = std::move(*res);
    auto w1 = Clock::now();
    int64_t exec_ns = ns_between(e0, e1);
    JsonLine()
        .str("type", "iteration")
        .num("index", index)
        .boolean("warmup", warmup)
        .num("execute_ns", exec_ns)
        .num("wall_ns", ns_between(w0, w1))
        .emit();
    return exec_ns;
  }

  // set_inputs refused: a smaller shape was let through for dynamic inputs; refused, it was a
  // static one: say which.
  [[noreturn]] void refuse_inputs(const Loaded& ld, Error e) {
    const std::string& method = ld.common.method;
    for (size_t i = 0; i < prepared_.size(); ++i) {
      auto info = ld.meta.input_tensor_meta(i);
      if (info.ok() && to_vec(info->sizes()) != prepared_[i].shape)
        fail("input", kExitInput, Error::InvalidArgument,
             "input " + std::to_string(i) + " (" + prepared_[i].source + ") has shape " +
                 shape_text(prepared_[i].shape) + ", the method expects " + shape_text(to_vec(info->sizes())) +
                 " (the runtime refused the smaller shape: this input is static; only a program exported "
                 "with a dynamic dimension there takes one)");
    }
    fail("input", kExitInput, e,
         "set_inputs(" + method + ") failed with " + error_name(e) + ": the inputs do not fit the method's input metadata");
  }

  // Runs every sample of the batch once, stacks output 0 into --batch-output, prints `batch`.
  void run_batch(Loaded& ld, BatchInput& batch) {
    const std::string& method = ld.common.method;
    std::vector<executorch::aten::SizesType> sizes(batch.sample_shape.begin(), batch.sample_shape.end());
    std::vector<uint8_t> stacked;
    std::vector<int64_t> out_shape;
    ScalarType out_dtype = ScalarType::Float;
    int64_t exec_total_ns = 0;
    auto b0 = Clock::now();
    for (int64_t k = 0; k < batch.samples; ++k) {
      const std::string which = "batch sample " + std::to_string(k) + " of " + o_.input_batch;
      auto tensor = executorch::extension::from_blob(batch.array.data.data() + k * batch.sample_bytes, sizes,
                                                     batch.dtype);
      std::vector<EValue> values;
      values.emplace_back(tensor);
      Error e = ld.module.set_inputs(method, values);
      if (e != Error::Ok)
        fail("input", kExitInput, e, "set_inputs(" + method + ") failed with " + error_name(e) + " (" + which + ")");
      auto e0 = Clock::now();
      auto res = ld.module.execute(method);
      auto e1 = Clock::now();
      if (!res.ok())
        fail("execute", kExitExecute, res.error(),
             "execute(" + method + ") failed with " + error_name(res.error()) + " (" + which + ")");
      exec_total_ns += ns_between(e0, e1);
      if (res->empty() || !(*res)[0].isTensor())
        fail("output", kExitOutput, Error::NotSupported,
             "output 0 of method " + method + " is not a tensor; --batch-output stacks tensors only");
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
    if (!write_npy(o_.batch_output, out_dtype, stacked_shape, stacked.data(), stacked.size(), &why))
      fail("output", kExitOutput, Error::AccessFailed, "--batch-output: " + why);
    JsonLine()
        .str("type", "batch")
        .str("input", o_.input_batch)
        .num("samples", batch.samples)
        .raw("input_shape", json_int_array(batch.array.shape))
        .str("output", o_.batch_output)
        .raw("output_shape", json_int_array(stacked_shape))
        .str("dtype", dtype_text(out_dtype))
        .num("execute_ns_total", exec_total_ns)
        .num("wall_ns_total", ns_between(b0, b1))
        .emit();
  }

  ForwardOptions o_;
  std::vector<PreparedInput> prepared_;
  std::vector<EValue> values_;
  std::vector<EValue> outputs_;
};

}  // namespace

std::unique_ptr<Mode> make_forward_mode() { return std::make_unique<ForwardMode>(); }

}  // namespace edgerun
