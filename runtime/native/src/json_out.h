// Minimal JSON-lines writer for edgerun-runner's stdout protocol (see PROTOCOL.md).
//
// One JsonLine is one object; emit() writes it as a single '\n'-terminated line and flushes,
// so a reader that is killed mid-run still has every line printed so far.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace edgerun {

std::string json_escape(const std::string& s);

class JsonLine {
 public:
  JsonLine& str(const char* key, const std::string& value);
  JsonLine& str_or_null(const char* key, const std::string* value);
  JsonLine& num(const char* key, int64_t value);
  JsonLine& num_or_null(const char* key, int64_t value, bool present);
  JsonLine& boolean(const char* key, bool value);
  // A double, shortest round-trip text; NaN/inf (which JSON cannot hold) become null.
  JsonLine& dbl(const char* key, double value);
  JsonLine& null(const char* key);
  // value is already-serialised JSON (an object or an array built by the caller).
  JsonLine& raw(const char* key, const std::string& json);
  std::string text() const { return "{" + body_ + "}"; }
  void emit(FILE* out = stdout) const;

 private:
  void key(const char* k);
  std::string body_;
};

std::string json_string_array(const std::vector<std::string>& items);
std::string json_int_array(const std::vector<int64_t>& items);
std::string json_double(double value);

}  // namespace edgerun
