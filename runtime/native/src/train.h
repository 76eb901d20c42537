// The runner's train mode (`--train`): fine-tuning on the device with the plain runtime. The
// program is an ExecuTorch training program (torch.export -> _export_forward_backward -> to_edge):
// `forward(x [B,...], y [B]) -> [loss, user outputs..., grads..., params...]`, with the layout in its
// `__et_training_*_forward` methods. The parameter outputs alias the method's own memory, so the
// optimizer's in-place updates are what the next step computes with. See PROTOCOL.md.
#pragma once

#include <cstdint>
#include <string>

#include <executorch/extension/module/module.h>

namespace edgerun {

struct TrainOptions {
  bool enabled = false;
  std::string algorithm = "backprop";   // backprop (a training program) | mezo (weights-as-inputs forward)
  double mezo_eps = 1e-3;               // mezo: perturbation scale
  std::string weights_in;               // mezo: dir of the starting weights, NAME.npy
  std::string data, labels;             // .npy: [N, *sample] inputs, [N] int64 labels
  std::string eval_data, eval_labels;   // held-out split, evaluated before, every --eval-every, and after
  int64_t steps = 100;                  // optimizer steps
  int64_t grad_accum = 1;               // batches per optimizer step
  double lr = 0.01;
  std::string optimizer = "sgd";        // sgd | adamw
  double momentum = 0.0;                // sgd
  double weight_decay = 0.0;            // sgd: L2 added to the gradient; adamw: decoupled
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
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

// Runs the training loop on the loaded module and prints its lines; failures go through fail().
// Returns the number of optimizer steps run in this invocation. (The mode, make_train_mode, is at
// the end of train.cpp.)
int64_t run_train(executorch::extension::Module& module, const std::string& method, const TrainOptions& o,
                  uint64_t seed);

}  // namespace edgerun
