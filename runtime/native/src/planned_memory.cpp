// LazyPlannedMemory (see mode.h): a method's memory plan in anonymous mappings, resident page by page as
// the program writes it.
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "mode.h"

namespace edgerun {

using executorch::runtime::Error;
using executorch::runtime::HierarchicalAllocator;
using executorch::runtime::MethodMeta;
using executorch::runtime::Span;

std::unique_ptr<LazyPlannedMemory> LazyPlannedMemory::make(const MethodMeta& meta, std::string* why) {
  std::unique_ptr<LazyPlannedMemory> m(new LazyPlannedMemory());
  const size_t n = meta.num_memory_planned_buffers();
  for (size_t i = 0; i < n; ++i) {
    auto size = meta.memory_planned_buffer_size(i);
    if (!size.ok() || *size < 0) {
      *why = "cannot read the size of planned buffer " + std::to_string(i);
      return nullptr;
    }
    const size_t bytes = static_cast<size_t>(*size);
    uint8_t* data = nullptr;
    if (bytes > 0) {
      void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        *why = "mmap of " + std::to_string(bytes) + " bytes failed: " + std::strerror(errno);
        return nullptr;  // the destructor unmaps what was mapped so far
      }
      data = static_cast<uint8_t*>(p);
    }
    m->spans_.emplace_back(data, bytes);
  }
  m->allocator_ = std::make_unique<HierarchicalAllocator>(Span<Span<uint8_t>>(m->spans_.data(), m->spans_.size()));
  return m;
}

LazyPlannedMemory::~LazyPlannedMemory() {
  for (auto& s : spans_)
    if (s.size() > 0) ::munmap(s.data(), s.size());
}

Error load_method_lazily(executorch::extension::Module& module, const std::string& method,
                         std::unique_ptr<LazyPlannedMemory>* keep) {
  auto meta = module.method_meta(method);
  if (!meta.ok()) return meta.error();
  std::string why;
  auto planned = LazyPlannedMemory::make(*meta, &why);
  if (!planned) return module.load_method(method);  // Module's own (zero-filled) buffers: the same program
  Error e = module.load_method(method, planned->allocator());
  if (e == Error::Ok) *keep = std::move(planned);
  return e;
}

}  // namespace edgerun
