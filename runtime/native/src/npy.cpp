#include "npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace edgerun {

namespace {

struct DtypeEntry {
  ScalarType type;
  const char* numpy;
  const char* descr;
};

// Little-endian hosts only (x86_64, aarch64): '<' and '=' mean the same thing here.
const DtypeEntry kDtypes[] = {
    {ScalarType::Float, "float32", "<f4"},  {ScalarType::Double, "float64", "<f8"},
    {ScalarType::Half, "float16", "<f2"},   {ScalarType::Byte, "uint8", "|u1"},
    {ScalarType::Char, "int8", "|i1"},      {ScalarType::Short, "int16", "<i2"},
    {ScalarType::Int, "int32", "<i4"},      {ScalarType::Long, "int64", "<i8"},
    {ScalarType::Bool, "bool", "|b1"},      {ScalarType::UInt16, "uint16", "<u2"},
};

const char kMagic[] = "\x93NUMPY";

// Finds 'key' in the header dict and returns the text after its ':' (whitespace skipped).
bool find_value(const std::string& header, const char* key, size_t* pos) {
  std::string quoted1 = std::string("'") + key + "'";
  std::string quoted2 = std::string("\"") + key + "\"";
  size_t at = header.find(quoted1);
  size_t len = quoted1.size();
  if (at == std::string::npos) {
    at = header.find(quoted2);
    len = quoted2.size();
  }
  if (at == std::string::npos) return false;
  size_t p = header.find(':', at + len);
  if (p == std::string::npos) return false;
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  *pos = p;
  return true;
}

}  // namespace

std::string numpy_name(ScalarType t) {
  for (const auto& e : kDtypes)
    if (e.type == t) return e.numpy;
  return "";
}

std::string npy_descr(ScalarType t) {
  for (const auto& e : kDtypes)
    if (e.type == t) return e.descr;
  return "";
}

bool scalar_type_from_descr(const std::string& descr, ScalarType* out) {
  if (descr.size() < 2) return false;
  std::string d = descr;
  if (d[0] == '=') d[0] = '<';
  for (const auto& e : kDtypes) {
    std::string want = e.descr;
    // One-byte types may be written with any byte-order mark.
    bool one_byte = want[0] == '|';
    if (d == want || (one_byte && d.substr(1) == want.substr(1) &&
                      (d[0] == '<' || d[0] == '|' || d[0] == '>'))) {
      *out = e.type;
      return true;
    }
  }
  return false;
}

bool looks_like_npy(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= 6 && std::memcmp(bytes.data(), kMagic, 6) == 0;
}

bool parse_npy(const std::vector<uint8_t>& bytes, NpyArray* out, std::string* why) {
  if (!looks_like_npy(bytes) || bytes.size() < 10) {
    *why = "not a .npy file (bad magic)";
    return false;
  }
  uint8_t major = bytes[6];
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = bytes[8] | (bytes[9] << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) {
      *why = "truncated .npy header";
      return false;
    }
    header_len = static_cast<size_t>(bytes[8]) | (static_cast<size_t>(bytes[9]) << 8) |
                 (static_cast<size_t>(bytes[10]) << 16) | (static_cast<size_t>(bytes[11]) << 24);
    header_start = 12;
  } else {
    *why = "unsupported .npy version " + std::to_string(major);
    return false;
  }
  if (header_start + header_len > bytes.size()) {
    *why = "truncated .npy header";
    return false;
  }
  std::string header(reinterpret_cast<const char*>(bytes.data()) + header_start, header_len);

  size_t p = 0;
  if (!find_value(header, "descr", &p) || p >= header.size() ||
      (header[p] != '\'' && header[p] != '"')) {
    *why = "no 'descr' in .npy header";
    return false;
  }
  char quote = header[p];
  size_t end = header.find(quote, p + 1);
  if (end == std::string::npos) {
    *why = "malformed 'descr' in .npy header";
    return false;
  }
  out->descr = header.substr(p + 1, end - p - 1);
  if (!scalar_type_from_descr(out->descr, &out->dtype)) {
    *why = "unsupported .npy dtype '" + out->descr + "'";
    return false;
  }

  if (!find_value(header, "fortran_order", &p)) {
    *why = "no 'fortran_order' in .npy header";
    return false;
  }
  bool fortran = header.compare(p, 4, "True") == 0;

  if (!find_value(header, "shape", &p) || p >= header.size() || header[p] != '(') {
    *why = "no 'shape' in .npy header";
    return false;
  }
  end = header.find(')', p);
  if (end == std::string::npos) {
    *why = "malformed 'shape' in .npy header";
    return false;
  }
  out->shape.clear();
  std::string dims = header.substr(p + 1, end - p - 1);
  size_t i = 0;
  while (i < dims.size()) {
    while (i < dims.size() && (dims[i] == ' ' || dims[i] == ',')) ++i;
    if (i >= dims.size()) break;
    size_t j = i;
    while (j < dims.size() && dims[j] >= '0' && dims[j] <= '9') ++j;
    if (j == i) {
      *why = "malformed 'shape' in .npy header";
      return false;
    }
    out->shape.push_back(std::stoll(dims.substr(i, j - i)));
    i = j;
  }
  size_t numel = 1;
  size_t non_trivial = 0;
  for (int64_t d : out->shape) {
    numel *= static_cast<size_t>(d);
    if (d > 1) ++non_trivial;
  }
  if (fortran && non_trivial > 1) {
    *why = "Fortran-ordered .npy arrays are not supported (save with np.ascontiguousarray)";
    return false;
  }
  size_t nbytes = numel * executorch::runtime::elementSize(out->dtype);
  size_t data_start = header_start + header_len;
  if (bytes.size() - data_start != nbytes) {
    *why = "data size " + std::to_string(bytes.size() - data_start) + " bytes does not match shape (" +
           std::to_string(nbytes) + " bytes expected); the file is truncated or corrupt";
    return false;
  }
  out->data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(data_start), bytes.end());
  return true;
}

bool write_npy(const std::string& path, ScalarType dtype, const std::vector<int64_t>& shape,
               const void* data, size_t nbytes, std::string* why) {
  std::string descr = npy_descr(dtype);
  if (descr.empty()) {
    *why = std::string("no numpy dtype for ExecuTorch scalar type ") +
           executorch::runtime::toString(dtype);
    return false;
  }
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) dict += ",";
    if (i + 1 < shape.size()) dict += " ";
  }
  dict += "), }";
  // Pad so that the data starts on a 64-byte boundary, header ends with '\n' (format 1.0).
  size_t total = 10 + dict.size() + 1;
  size_t pad = (64 - total % 64) % 64;
  dict.append(pad, ' ');
  dict.push_back('\n');
  if (dict.size() > 0xFFFF) {
    *why = "shape too large for a .npy 1.0 header";
    return false;
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    *why = "cannot open " + path + " for writing: " + std::strerror(errno);
    return false;
  }
  uint8_t preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                          static_cast<uint8_t>(dict.size() & 0xFF),
                          static_cast<uint8_t>(dict.size() >> 8)};
  bool ok = std::fwrite(preamble, 1, 10, f) == 10 &&
            std::fwrite(dict.data(), 1, dict.size(), f) == dict.size() &&
            (nbytes == 0 || std::fwrite(data, 1, nbytes, f) == nbytes);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    *why = "cannot write " + path + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace edgerun
