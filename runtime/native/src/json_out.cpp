#include "json_out.h"

#include <cmath>

namespace edgerun {

std::string json_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));  // UTF-8 passes through unchanged
        }
    }
  }
  out.push_back('"');
  return out;
}

void JsonLine::key(const char* k) {
  if (!body_.empty()) body_.push_back(',');
  body_ += json_escape(k);
  body_.push_back(':');
}

JsonLine& JsonLine::str(const char* k, const std::string& value) {
  key(k);
  body_ += json_escape(value);
  return *this;
}

JsonLine& JsonLine::str_or_null(const char* k, const std::string* value) {
  return value ? str(k, *value) : null(k);
}

JsonLine& JsonLine::num(const char* k, int64_t value) {
  key(k);
  body_ += std::to_string(value);
  return *this;
}

JsonLine& JsonLine::num_or_null(const char* k, int64_t value, bool present) {
  return present ? num(k, value) : null(k);
}

JsonLine& JsonLine::boolean(const char* k, bool value) {
  key(k);
  body_ += value ? "true" : "false";
  return *this;
}

std::string json_double(double value) {
  if (!std::isfinite(value)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", value);
  double back = 0;
  // the shortest of %.15g/%.16g/%.17g that reads back as the same double
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, value);
    if (std::sscanf(buf, "%lf", &back) == 1 && back == value) break;
  }
  return buf;
}

JsonLine& JsonLine::dbl(const char* k, double value) {
  key(k);
  body_ += json_double(value);
  return *this;
}

JsonLine& JsonLine::null(const char* k) {
  key(k);
  body_ += "null";
  return *this;
}

JsonLine& JsonLine::raw(const char* k, const std::string& json) {
  key(k);
  body_ += json;
  return *this;
}

void JsonLine::emit(FILE* out) const {
  std::string line = text();
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), out);
  std::fflush(out);
}

std::string json_string_array(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out.push_back(',');
    out += json_escape(items[i]);
  }
  out.push_back(']');
  return out;
}

std::string json_int_array(const std::vector<int64_t>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out.push_back(',');
    out += std::to_string(items[i]);
  }
  out.push_back(']');
  return out;
}

}  // namespace edgerun
