#!/usr/bin/env bash
# CPU time per kernel call from `perf stat` task-clock, setup subtracted: on a machine shared with other
# work, wall time overstates a kernel's cost while CPU time does not. Usage: scripts/cpu_time_per_call.sh
# [kernel iterations]...
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p lowbit --no-default-features --bench cpu_fast_once --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/cpu_fast_once-* | grep -v '\.d$' | head -1)
clock() { perf stat -x, -e task-clock "$bin" "$@" 2>&1 >/dev/null | grep task-clock | cut -d, -f1; }
[ $# -gt 0 ] || set -- gemv_f32 40 ternary 200 matmul_4bit 3 matmul_f32 3 quantize_4bit 10 dequantize_4bit 10 quantize_blockwise 4
while [ $# -ge 2 ]; do
  k=$1 n=$2; shift 2
  base=$(clock "$k" 0); full=$(clock "$k" "$n")
  echo "$k cpu_ms_per_call $(python3 -c "print(round(($full - $base) / $n, 3))")"
done
