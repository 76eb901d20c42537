// llamacpp-ref: llama.cpp as an independent reference for edgerun's LLM export (edgerun.export.llm.llamacpp).
//
// Written for edgerun against llama.h of the llama.cpp that the pinned llama-cpp-python sdist vendors; it
// is built next to llama.cpp's own tools (CMakeLists.txt beside this file). CPU only, deterministic: one
// thread unless told otherwise, no sampling, every output a pure function of (GGUF, input, flags).
//
//   llamacpp-ref tokenize --model M --text-file F [--add-special 0|1] [--parse-special 0|1]
//       Loads the vocabulary only. Prints one JSON object: {"ids": [...], "n_vocab", "bos", "eos",
//       "add_bos", "vocab_type"}.
//   llamacpp-ref eval --model M --ids-file F --out O [--threads T] [--kv-type f32|f16]
//       One llama_decode of all ids (a single batch, logits requested for every position); writes the
//       logits as raw native-endian float32, row-major [n_ids, n_vocab], to O. Prints {"n_tokens",
//       "n_vocab"}.
//   llamacpp-ref greedy --model M --ids-file F -n N [--threads T] [--kv-type f32|f16]
//       Prefills the ids in one batch, then decodes N tokens one at a time, each the argmax (the lowest
//       id among equal maxima) of the last logits. It does not stop at an end-of-generation token.
//       Prints {"ids": [the N new ids]}.
//
// An ids file holds decimal token ids separated by whitespace or commas (a JSON array is fine). The KV
// cache is float32 by default (llama.cpp's own default is f16) and flash attention is off, so the
// reference is as close to float32 arithmetic as llama.cpp gets on the GGUF's own weight types.
// Errors: one line "llamacpp-ref: error: ..." on stderr and exit status 1 (bad call: 2). llama.cpp's own
// warnings and errors go to stderr too; its info lines only with --verbose.

#include "llama.h"

#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr long kMaxTextBytes = 64L << 20;    // a text to tokenize: 64 MiB at most
constexpr long kMaxIdsFileBytes = 64L << 20; // an ids file
constexpr long kMaxIds = 1L << 20;           // ids in one eval/greedy call
constexpr long kMaxNew = 1L << 16;           // greedy's N
constexpr double kMaxLogitsBytes = 4.0 * (1L << 30);  // eval's output file

bool g_verbose = false;
int g_last_level = GGML_LOG_LEVEL_INFO;

void log_cb(enum ggml_log_level level, const char* text, void*) {
  int effective = level == GGML_LOG_LEVEL_CONT ? g_last_level : static_cast<int>(level);
  if (level != GGML_LOG_LEVEL_CONT) g_last_level = level;
  if (g_verbose || effective >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
}

[[noreturn]] void fail(int code, const char* fmt, ...) {
  std::fputs("llamacpp-ref: error: ", stderr);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  std::exit(code);
}

struct Args {
  std::string cmd, model, text_file, ids_file, out, kv_type = "f32";
  bool add_special = true, parse_special = true;
  long threads = 1, n_new = -1;
};

long parse_long(const char* flag, const char* s, long lo, long hi) {
  errno = 0;
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
    fail(2, "%s %s: expected an integer in [%ld, %ld]", flag, s, lo, hi);
  return v;
}

bool parse_bool(const char* flag, const char* s) {
  if (std::strcmp(s, "1") == 0 || std::strcmp(s, "true") == 0) return true;
  if (std::strcmp(s, "0") == 0 || std::strcmp(s, "false") == 0) return false;
  fail(2, "%s %s: expected 0 or 1", flag, s);
}

Args parse_args(int argc, char** argv) {
  if (argc < 2)
    fail(2,
         "usage:\n"
         "  llamacpp-ref tokenize --model GGUF --text-file F [--add-special 0|1] [--parse-special 0|1]\n"
         "  llamacpp-ref eval --model GGUF --ids-file F --out LOGITS.f32 [--threads T] [--kv-type f32|f16]\n"
         "  llamacpp-ref greedy --model GGUF --ids-file F -n N [--threads T] [--kv-type f32|f16]");
  Args a;
  a.cmd = argv[1];
  if (a.cmd != "tokenize" && a.cmd != "eval" && a.cmd != "greedy")
    fail(2, "unknown subcommand '%s'; expected tokenize, eval or greedy", a.cmd.c_str());
  for (int i = 2; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "--verbose") { g_verbose = true; continue; }
    if (i + 1 >= argc) fail(2, "%s needs a value", f.c_str());
    const char* v = argv[++i];
    if (f == "--model") a.model = v;
    else if (f == "--text-file") a.text_file = v;
    else if (f == "--ids-file") a.ids_file = v;
    else if (f == "--out") a.out = v;
    else if (f == "--kv-type") a.kv_type = v;
    else if (f == "--add-special") a.add_special = parse_bool("--add-special", v);
    else if (f == "--parse-special") a.parse_special = parse_bool("--parse-special", v);
    else if (f == "--threads") a.threads = parse_long("--threads", v, 1, 512);
    else if (f == "-n") a.n_new = parse_long("-n", v, 0, kMaxNew);
    else fail(2, "unknown flag %s", f.c_str());
  }
  if (a.model.empty()) fail(2, "--model GGUF is required");
  if (a.cmd == "tokenize" && a.text_file.empty()) fail(2, "tokenize needs --text-file");
  if (a.cmd != "tokenize" && a.ids_file.empty()) fail(2, "%s needs --ids-file", a.cmd.c_str());
  if (a.cmd == "eval" && a.out.empty()) fail(2, "eval needs --out");
  if (a.cmd == "greedy" && a.n_new < 0) fail(2, "greedy needs -n N");
  if (a.kv_type != "f32" && a.kv_type != "f16") fail(2, "--kv-type %s: expected f32 or f16", a.kv_type.c_str());
  return a;
}

std::string read_file(const std::string& path, long max_bytes, const char* what) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(1, "cannot open %s %s: %s", what, path.c_str(), std::strerror(errno));
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (static_cast<long>(data.size() + n) > max_bytes) {
      std::fclose(f);
      fail(1, "%s %s is larger than %ld bytes", what, path.c_str(), max_bytes);
    }
    data.append(buf, n);
  }
  bool err = std::ferror(f);
  std::fclose(f);
  if (err) fail(1, "cannot read %s %s", what, path.c_str());
  return data;
}

// Decimal ids separated by whitespace or commas, optionally inside one pair of brackets.
std::vector<llama_token> read_ids(const std::string& path, int32_t n_vocab) {
  std::string s = read_file(path, kMaxIdsFileBytes, "ids file");
  std::vector<llama_token> ids;
  size_t i = 0;
  auto skip = [&] { while (i < s.size() && (std::strchr(" \t\r\n,[]", s[i]) != nullptr)) ++i; };
  for (skip(); i < s.size(); skip()) {
    if (s[i] < '0' || s[i] > '9')
      fail(1, "ids file %s: byte %zu ('%c') is not part of a non-negative decimal id", path.c_str(), i, s[i]);
    long v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      v = v * 10 + (s[i++] - '0');
      if (v >= n_vocab) fail(1, "ids file %s: id %ld... is not below the vocabulary size %d", path.c_str(), v, n_vocab);
    }
    if (static_cast<long>(ids.size()) >= kMaxIds) fail(1, "ids file %s holds more than %ld ids", path.c_str(), kMaxIds);
    ids.push_back(static_cast<llama_token>(v));
  }
  if (ids.empty()) fail(1, "ids file %s holds no ids", path.c_str());
  return ids;
}

llama_model* load_model(const Args& a, bool vocab_only) {
  llama_model_params mp = llama_model_default_params();
  mp.vocab_only = vocab_only;
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(a.model.c_str(), mp);
  if (!model) fail(1, "llama.cpp could not load %s (its messages above say why)", a.model.c_str());
  return model;
}

void print_ids(const std::vector<llama_token>& ids) {
  std::fputc('[', stdout);
  for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? ",%d" : "%d", ids[i]);
  std::fputc(']', stdout);
}

int cmd_tokenize(const Args& a) {
  std::string text = read_file(a.text_file, kMaxTextBytes, "text file");
  llama_model* model = load_model(a, /*vocab_only=*/true);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  // Enough for one token per byte plus BOS/EOS; a negative count is the size actually needed.
  std::vector<llama_token> ids(text.size() + 8);
  int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                             static_cast<int32_t>(ids.size()), a.add_special, a.parse_special);
  if (n == INT32_MIN) fail(1, "tokenizing %s overflowed llama.cpp's int32 count", a.text_file.c_str());
  if (n < 0) {
    ids.resize(static_cast<size_t>(-n));
    n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                       static_cast<int32_t>(ids.size()), a.add_special, a.parse_special);
    if (n < 0) fail(1, "llama_tokenize failed on %s (returned %d)", a.text_file.c_str(), n);
  }
  ids.resize(static_cast<size_t>(n));
  std::printf("{\"ids\":");
  print_ids(ids);
  std::printf(",\"n_vocab\":%d,\"bos\":%d,\"eos\":%d,\"add_bos\":%s,\"vocab_type\":%d}\n",
              llama_vocab_n_tokens(vocab), llama_vocab_bos(vocab), llama_vocab_eos(vocab),
              llama_vocab_get_add_bos(vocab) ? "true" : "false", static_cast<int>(llama_vocab_type(vocab)));
  llama_model_free(model);
  return 0;
}

llama_context* make_context(const Args& a, llama_model* model, uint32_t n_ctx, uint32_t n_batch) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = n_ctx;
  cp.n_batch = n_batch;
  cp.n_ubatch = n_batch;  // one physical batch: a prefill is one graph, as in edgerun's program
  cp.n_seq_max = 1;
  cp.n_threads = static_cast<int32_t>(a.threads);
  cp.n_threads_batch = static_cast<int32_t>(a.threads);
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.type_k = a.kv_type == "f32" ? GGML_TYPE_F32 : GGML_TYPE_F16;
  cp.type_v = cp.type_k;
  cp.no_perf = true;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) fail(1, "llama.cpp could not create a context of %u tokens for %s", n_ctx, a.model.c_str());
  return ctx;
}

// Decode ids[0..n) at positions pos0.. in one batch; logits for every position or only the last.
void decode(llama_context* ctx, const llama_token* ids, int32_t n, int32_t pos0, bool all_logits) {
  llama_batch b = llama_batch_init(n, 0, 1);
  for (int32_t i = 0; i < n; ++i) {
    b.token[i] = ids[i];
    b.pos[i] = pos0 + i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = all_logits || i == n - 1;
  }
  b.n_tokens = n;
  int32_t rc = llama_decode(ctx, b);
  llama_batch_free(b);
  if (rc != 0) fail(1, "llama_decode of %d tokens at position %d returned %d", n, pos0, rc);
}

llama_token argmax(const float* row, int32_t n_vocab) {
  llama_token best = 0;
  for (int32_t j = 1; j < n_vocab; ++j)
    if (row[j] > row[best]) best = j;
  return best;
}

int cmd_eval(const Args& a) {
  llama_model* model = load_model(a, false);
  const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::vector<llama_token> ids = read_ids(a.ids_file, n_vocab);
  const int32_t n = static_cast<int32_t>(ids.size());
  if (static_cast<double>(n) * n_vocab * 4 > kMaxLogitsBytes)
    fail(1, "%d positions x %d vocabulary floats exceed the %.0f-byte output bound", n, n_vocab, kMaxLogitsBytes);
  llama_context* ctx = make_context(a, model, static_cast<uint32_t>(n), static_cast<uint32_t>(n));
  decode(ctx, ids.data(), n, 0, /*all_logits=*/true);
  FILE* out = std::fopen(a.out.c_str(), "wb");
  if (!out) fail(1, "cannot write %s: %s", a.out.c_str(), std::strerror(errno));
  for (int32_t i = 0; i < n; ++i) {
    const float* row = llama_get_logits_ith(ctx, i);
    if (!row) fail(1, "llama.cpp returned no logits for position %d", i);
    if (std::fwrite(row, sizeof(float), static_cast<size_t>(n_vocab), out) != static_cast<size_t>(n_vocab))
      fail(1, "short write to %s", a.out.c_str());
  }
  if (std::fclose(out) != 0) fail(1, "cannot write %s: %s", a.out.c_str(), std::strerror(errno));
  std::printf("{\"n_tokens\":%d,\"n_vocab\":%d}\n", n, n_vocab);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

int cmd_greedy(const Args& a) {
  llama_model* model = load_model(a, false);
  const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::vector<llama_token> prompt = read_ids(a.ids_file, n_vocab);
  const int32_t n_prompt = static_cast<int32_t>(prompt.size());
  const int32_t n_new = static_cast<int32_t>(a.n_new);
  llama_context* ctx = make_context(a, model, static_cast<uint32_t>(n_prompt + n_new), static_cast<uint32_t>(n_prompt));
  std::vector<llama_token> out;
  if (n_new > 0) {
    decode(ctx, prompt.data(), n_prompt, 0, /*all_logits=*/false);
    out.push_back(argmax(llama_get_logits_ith(ctx, -1), n_vocab));
    while (static_cast<int32_t>(out.size()) < n_new) {
      llama_token t = out.back();
      decode(ctx, &t, 1, n_prompt + static_cast<int32_t>(out.size()) - 1, false);
      out.push_back(argmax(llama_get_logits_ith(ctx, -1), n_vocab));
    }
  }
  std::printf("{\"ids\":");
  print_ids(out);
  std::printf("}\n");
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  llama_log_set(log_cb, nullptr);
  llama_backend_init();
  int rc = a.cmd == "tokenize" ? cmd_tokenize(a) : a.cmd == "eval" ? cmd_eval(a) : cmd_greedy(a);
  llama_backend_free();
  return rc;
}
