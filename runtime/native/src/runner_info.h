// What is running: the `header` line every run prints first (versions, build, thread pool, XNNPACK
// options) and the `kernels` line of --list-kernels. See PROTOCOL.md.
#pragma once

#include <string>

namespace edgerun {

// threads_auto: the --threads auto trial as JSON, or "null".
void print_header(const std::string& threads_auto);
void print_kernels();

}  // namespace edgerun
