// The two thread-pool entry points edgerun-runner uses, declared here because the executorch
// wheel ships libexecutorch_threadpool.so but not its header (extension/threadpool/threadpool.h).
//
// These declarations must match ExecuTorch's public header exactly (namespace, class name,
// member names, parameter types and constness), since only the mangled names link them:
//   executorch::extension::threadpool::get_threadpool()
//   ThreadPool::get_thread_count() const
//   ThreadPool::_unsafe_reset_threadpool(uint32_t)
// Only non-virtual member functions are called through a pointer obtained from the library,
// so the class layout is never needed here. `nm -DC libexecutorch_threadpool.so` lists them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace executorch::extension::threadpool {

class ThreadPool final {
 public:
  size_t get_thread_count() const;
  // Replaces the pool with one of num_threads threads. Not thread safe: call it before any
  // method is loaded (an XNNPACK runtime keeps the pool it was created with).
  bool _unsafe_reset_threadpool(uint32_t num_threads);

 private:
  ThreadPool() = delete;
};

ThreadPool* get_threadpool();

}  // namespace executorch::extension::threadpool
