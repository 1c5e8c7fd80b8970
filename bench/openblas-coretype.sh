#!/usr/bin/env bash
# Prints the OpenBLAS kernels noprop picks for this CPU when OPENBLAS_CORETYPE is unset
# (src/noprop/runtime.cpp, openblas_coretype): the scripts give the seed's Python the same.
flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
if has avx512f avx512bw avx512dq avx512vl; then echo SkylakeX
elif has avx2 fma; then echo Haswell
else echo Prescott
fi
