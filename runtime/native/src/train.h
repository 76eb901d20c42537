// The runner's train mode (`--train`): fine-tuning on the device with the plain runtime. train.cpp
// holds the one training loop -- data batching and shuffle, learning-rate schedule, `step` and
// `eval` lines, checkpoints and --resume, --stop-at, --weights-out -- and a StepRule says what one
// optimizer step does to the trainable parameters:
//   backprop (train_backprop.cpp): an ExecuTorch training program (torch.export ->
//     _export_forward_backward -> to_edge), `forward(x [B,...], y [B]) -> [loss, user outputs...,
//     grads..., params...]` with the layout in its `__et_training_*_forward` methods; SGD (momentum) /
//     AdamW with gradient accumulation. The parameter outputs alias the method's own memory, so the
//     optimizer's in-place updates are what the next step computes with.
//   mezo (train_mezo.cpp): zeroth-order SGD on an inference-only `forward(x, y, *weights) -> (loss,
//     pred)`, the weights in the runner's buffers.
// A new rule is one StepRule (its own file) and one row in train.cpp's kRules. See PROTOCOL.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <executorch/extension/module/module.h>

#include "npy.h"
#include "runner_common.h"

namespace edgerun {

// The flags of the loop itself; a rule parses its own (--optimizer, --mezo-eps, ...).
struct TrainOptions {
  bool enabled = false;
  std::string data, labels;             // .npy: [N, *sample] inputs, [N] int64 labels
  std::string eval_data, eval_labels;   // held-out split, evaluated before, every --eval-every, and after
  int64_t steps = 100;                  // optimizer steps
  double lr = 0.01;
  double weight_decay = 0.0;            // the rule's: L2 (sgd), decoupled (adamw), shrinking (mezo)
  std::string schedule = "constant";    // constant | cosine (to 0 at the last step)
  int64_t warmup_steps = 0;             // linear warm-up of the learning rate
  int64_t log_every = 1;                // a `step` line every K optimizer steps (and the last)
  int64_t eval_every = 0;               // 0: before and after only
  std::string checkpoint;               // path: trainable params + optimizer state + step + data position
  int64_t checkpoint_every = 0;
  std::string resume;                   // a checkpoint written by --checkpoint
  std::string weights_out;              // dir: the trained parameters as NAME.npy at the end
  int64_t stop_at = 0;                  // stop after this optimizer step (a session of a longer run; --resume goes on)
  bool shuffle = true;                  // --no-shuffle: batches in file order, epoch after epoch
};

// The shapes of one training batch, as the program takes it.
struct Layout {
  int64_t batch = 0;
  std::vector<int64_t> sample_shape, label_shape;
  executorch::aten::ScalarType x_dtype = executorch::aten::ScalarType::Float;
};

// One split (--data/--labels or --eval-data/--eval-labels), read whole.
struct Split {
  NpyArray x, y;
  int64_t n = 0;
  size_t sample_bytes = 0;
  int64_t label_elems = 1;  // labels per sample: 1 for a class, T for next-token targets [N, T]
};

// A trainable float32 parameter: the memory a rule updates, the checkpoint holds and --weights-out writes.
struct Param {
  std::string name;
  float* data;
  size_t n;
  std::vector<int64_t> shape;
};

// The loop's position and the rule's per-parameter state (checkpointed): m and v are empty or hold
// one buffer per parameter (backprop: momentum or AdamW's first moment, and its second moment).
struct State {
  int64_t step = 0;      // optimizer steps done
  int64_t batches = 0;   // training batches consumed (the data position)
  std::vector<std::vector<float>> m, v;
};

// The training split batch after batch: each epoch a permutation from (seed, epoch), the same on
// every platform; the position is the State's `batches`.
class Batches {
 public:
  Batches(const Split& split, int64_t batch, uint64_t seed, bool shuffle, State* st)
      : split_(split), batch_(batch), seed_(seed), shuffle_(shuffle), st_(st) {}
  const Split& split() const { return split_; }
  // The sample indices of the next batch [batch]; moves the position on.
  const int64_t* next();

 private:
  const Split& split_;
  int64_t batch_;
  uint64_t seed_;
  bool shuffle_;
  State* st_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

// One forward over a batch, for the eval lines and the rules.
struct Scored {
  double loss = 0;
  int64_t correct = -1;  // -1: no prediction output to score
  int64_t execute_ns = 0;
};

// What one optimizer step reports for its `step` line.
struct StepOutcome {
  double loss = 0;
  int64_t execute_ns = 0;
  std::vector<std::pair<const char*, double>> fields;  // the rule's own, after `loss_mean`
};

// What the `train` line says about a rule.
struct RuleFacts {
  std::string algorithm;                               // "" (backprop): no `algorithm` key
  std::string optimizer;
  int64_t batches_per_step = 1;                        // the line's `grad_accum`
  int64_t state_copies = 0;                            // float32 copies of the parameters the state holds
  std::vector<std::pair<const char*, double>> fields;  // the rule's own, after `lr`
  std::vector<std::pair<const char*, std::string>> texts;  // the rule's own words (zeroth-order noise)
};

class StepRule {
 public:
  virtual ~StepRule() = default;

  // Flags, as a Mode's: the rule's own, whichever rule runs; chosen() picks the rule (the default last).
  virtual bool parse_flag(Args& args, std::string* problem) = 0;
  virtual bool chosen() const = 0;
  virtual std::string usage() const { return ""; }

  // Checks the program and reads what the rule needs from it (and from its own files); the batch
  // shapes the data must have. Failures go through fail().
  virtual Layout open(executorch::extension::Module& module, const std::string& method, uint64_t seed) = 0;
  // After the splits are checked: the trainable parameters, bound to the memory the rule updates.
  virtual std::vector<Param> bind(const Split& train) = 0;
  // After a --resume: the per-parameter state the checkpoint did not hold.
  virtual void init_state(State* /*st*/) {}
  virtual RuleFacts facts() const = 0;

  // A forward over samples idx[0..batch) of s, for evaluation (no update).
  virtual Scored score(const Split& s, const int64_t* idx) = 0;
  // One optimizer step from st->step (taking its batches from `batches`) at learning rate lr;
  // fails (diverged) when the step's loss or estimate is not finite.
  virtual StepOutcome step(Batches& batches, double lr, State* st) = 0;
};

std::unique_ptr<StepRule> make_backprop_rule(const TrainOptions& o);  // train_backprop.cpp
std::unique_ptr<StepRule> make_mezo_rule(const TrainOptions& o);      // train_mezo.cpp

// How many of the n labels the prediction output gets right: predicted ids [n], or scores [n, C];
// -1 when the output is neither.
int64_t count_correct(const executorch::aten::Tensor& pred, const int64_t* labels, int64_t n);

// A parameter name as a file name (NAME.npy of --weights-out and --weights-in).
std::string safe_name(const std::string& fqn);

}  // namespace edgerun
