// The runner's LLM mode (`--llm generate|score`): token-level work on a decoder program
// `forward(tokens [1,T] int64, input_pos [T] int64) -> logits [1,T,vocab]` whose KV cache lives in
// the program's own mutable buffers and whose T is dynamic (1..max_context). See PROTOCOL.md.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>

namespace edgerun {

struct LlmOptions {
  std::string mode;                 // "" (not an LLM run) | generate | score
  std::vector<int64_t> prompt;      // --prompt-ids / --tokens: the prompt (generate) or text (score)
  std::string tokens_source;        // where the ids came from, for the `llm` line
  int64_t random_prompt = 0;        // --random-prompt P: P ids uniform in [0, vocab) from --seed
  int64_t max_new_tokens = 32;
  std::vector<int64_t> stop_ids;    // --stop-id (repeatable): ids that end a generation
  bool ignore_stop = false;         // --ignore-stop: always generate max_new_tokens (benchmarks)
  double temperature = 0.0;         // 0: greedy (argmax)
  int64_t top_k = 0;                // 0: no top-k cut
  double top_p = 1.0;               // 1: no nucleus cut
  int64_t repeat = 1;               // timed repetitions of the whole prefill + decode
  int64_t window = 0;               // score: tokens per window (0: the method's max context)
  std::string logprobs_path;        // score: per-token log-probabilities as a float64 .npy
};

// Parses "1,2,3" or whitespace/comma separated ids (a --tokens file); false + *why on a bad id.
bool parse_ids(const std::string& text, std::vector<int64_t>* out, std::string* why);

// Runs the LLM mode on an already loaded method and prints its lines; failures go through fail().
// warmup: untimed repetitions first (their lines say "warmup": true). seed: sampling and
// --random-prompt. after_warmup runs between the warm-up and the timed repetitions (the ETDump is
// reset there). Returns the number of timed repetitions run.
int64_t run_llm(executorch::extension::Module& module, const std::string& method, const LlmOptions& o,
                int64_t warmup, uint64_t seed, const std::function<void()>& after_warmup);

}  // namespace edgerun
