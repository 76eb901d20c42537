# Cross-compile edgerun-runner for 64-bit Arm Linux with Debian's g++-aarch64-linux-gnu.
# The sysroot is the cross toolchain's own (/usr/aarch64-linux-gnu); the ExecuTorch libraries
# come from the aarch64 manylinux wheel, passed as EDGERUN_ET_ROOT by absolute path.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
