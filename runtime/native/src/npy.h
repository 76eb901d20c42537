// Reading and writing numpy .npy files (format versions 1.0-3.0, little-endian, C order),
// and the mapping between ExecuTorch scalar types and numpy dtype names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>

namespace edgerun {

using executorch::aten::ScalarType;

// numpy's name for an ExecuTorch scalar type ("float32", "int8", ...); "" if there is none.
std::string numpy_name(ScalarType t);
// The .npy descr ("<f4", "|i1", ...) for a scalar type; "" if there is none.
std::string npy_descr(ScalarType t);
// Parses a descr from a .npy header; false if it is not one we can map.
bool scalar_type_from_descr(const std::string& descr, ScalarType* out);

struct NpyArray {
  ScalarType dtype = ScalarType::Float;
  std::string descr;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

// Parses a whole .npy file already read into memory. On failure returns false and sets *why.
bool parse_npy(const std::vector<uint8_t>& bytes, NpyArray* out, std::string* why);

// True if the bytes start with the .npy magic.
bool looks_like_npy(const std::vector<uint8_t>& bytes);

// Writes a .npy (version 1.0). On failure returns false and sets *why.
bool write_npy(const std::string& path, ScalarType dtype, const std::vector<int64_t>& shape,
               const void* data, size_t nbytes, std::string* why);

}  // namespace edgerun
