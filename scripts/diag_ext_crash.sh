#!/usr/bin/env bash
# Diagnosis of the crash of 2026-11-22 (benchmarks/results/nvidia-h100-80gb-hbm3/2026-11-22-tests/NOTE.md):
# on the GPU machine the first TORCH_CHECK thrown inside convnext_fast._C killed the process with
# SIGSEGV. Its output of 2026-11-23 found the cause, a static copy of libstdc++ inside _C (that
# machine's /opt/gcc/bin/g++ links it so); setup.py now links the shared one
# (benchmarks/results/nvidia-h100-80gb-hbm3/2026-11-23-tests/NOTE.md). Kept for the next such crash.
# Prints the compilers, the libstdc++ / libgcc_s the
# extension links and the process loads, pybind11's ABI tags, then triggers three C++ errors (CPU
# 3-D input, CPU bad weight shape, CUDA bad weight shape), each in its own process with a SIGSEGV
# handler that prints the native backtrace, and the CPU one again under cuda-gdb where it exists
# (the GPU image has no gdb). Run after the build: `STEPS="build diag" scripts/gpu_run.sh $OUT`
# (-> diag.txt).
set -u
PY="${PYTHON:-$(command -v python || command -v python3)}"
cat > /tmp/segv.c <<'C'
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>
static void h(int s) { void* b[64]; int n = backtrace(b, 64); backtrace_symbols_fd(b, n, 2); _exit(139); }
__attribute__((constructor)) static void init(void) { signal(SIGSEGV, h); signal(SIGABRT, h); }
C
CC="$(command -v gcc || echo /opt/gcc/bin/gcc)"
"$CC" -shared -fPIC -o /tmp/libsegv.so /tmp/segv.c || echo "could not build the SIGSEGV handler"
DEMANGLE="$(command -v c++filt || command -v cat)"
for cxx in /opt/gcc/bin/g++ g++ "${CXX:-}"; do
    [ -n "$cxx" ] && command -v "$cxx" >/dev/null || continue
    # the C++ ABI macros pybind11 builds its internals id from, and the default std::string ABI
    echo "$cxx: $("$cxx" --version | head -1); $(echo '#include <string>' | "$cxx" -dM -E -x c++ - | grep -E "define (__GXX_ABI_VERSION|_GLIBCXX_USE_CXX11_ABI) " | tr '\n' ' ')"
done
"$PY" -c "import torch; print('torch built with _GLIBCXX_USE_CXX11_ABI', int(torch._C._GLIBCXX_USE_CXX11_ABI))"
SO=$(ls convnext_fast/_C*.so); strings -a "$SO" | grep "GCC:" | sort -u | head -3
ldd "$SO" | grep -E "stdc|gcc_s|c10|torch_python"
$PY - <<'P'
import torch, builtins
from convnext_fast import extension
C = extension._ext()
print("torch pybind", [(k, getattr(torch._C, k)) for k in dir(torch._C) if "PYBIND11" in k])
print("internals", [k for k in dir(builtins) if "pybind11" in k])
print("\n".join(sorted({l.split()[-1] for l in open("/proc/self/maps") if "libstdc++" in l or "libgcc_s" in l})))
P
cat > /tmp/repro.py <<'P'
import sys, torch
from convnext_fast import extension
C = extension._ext()
x = torch.randn(1, 8, 5, 5).contiguous(memory_format=torch.channels_last)
y = torch.empty_like(x)
which = sys.argv[1]
try:
    if which == "cpu_shape":
        C.dwconv_forward(x, torch.randn(6, 1, 3, 3), None, y)
    elif which == "cuda_shape":
        xc = x.cuda(); C.dwconv_forward(xc, torch.randn(6, 1, 3, 3, device="cuda"), None, torch.empty_like(xc))
    elif which == "x3d":
        C.dwconv_forward(x[0], torch.randn(8, 1, 3, 3), None, y)
except Exception as e:
    print(which, "raised", type(e).__name__, str(e)[:100])
P
for w in x3d cpu_shape cuda_shape; do LD_PRELOAD=/tmp/libsegv.so $PY /tmp/repro.py $w 2>&1 | "$DEMANGLE" | head -30; echo "[$w rc=${PIPESTATUS[0]}]"; done
# The GPU image has no gdb, but cuda-gdb debugs host-only programs too: a symbolized backtrace.
if command -v cuda-gdb >/dev/null; then
    echo "----- cuda-gdb, cpu_shape"
    timeout 60 cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary" --args $PY /tmp/repro.py cpu_shape 2>&1 | tail -80
fi
