#!/usr/bin/env bash
# End-to-end `lowbit quantize` on a synthetic Llama-3-8B-shaped bf16 checkpoint (sharded as transformers
# writes it), every format, warm and (where the page cache can be dropped) cold; compared with the
# quantize kernels' own rate (`lowbit bench`) and the disk read rate measured in the same run.
#
# Usage: scripts/bench_quantize.sh [--scale F | --layers N] [--dir DIR] [--formats "nf4 fp4 int8 ternary"]
#                                  [--device DEV] [--no-cold] [--keep]
#   --scale 1 (default) is the full model: 32 layers, 8.0 B parameters, 16.1 GB of bf16 (+ ~16 GB free
#   disk for outputs, written and removed one at a time). --scale 0.25 keeps 8 layers (plus the full
#   embedding and lm_head, 2.1 GB, which are copied unquantized as transformers does).
#   --device passes through to lowbit (e.g. a GPU); LOWBIT=path uses an existing binary.
# Cold runs write 3 to /proc/sys/vm/drop_caches (root only; skipped with a note otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

scale=1 layers="" dir="${TMPDIR:-/tmp}/lowbit-bench-quantize" formats="nf4 fp4 int8 ternary"
device="" cold=1 keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) scale="$2"; shift 2 ;;
        --layers) layers="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --formats) formats="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --no-cold) cold=0; shift ;;
        --keep) keep=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$layers" ] || layers=$(python3 -c "print(max(1, round(32 * $scale)))")
shard_gb=$(python3 -c "print(max(0.5, 5 * $layers / 32))")

if [ -z "${LOWBIT:-}" ]; then
    cargo build --release -q -p lowbit-cli --bin lowbit -p lowbit --example synth_checkpoint
    LOWBIT=target/release/lowbit
fi
synth=target/release/examples/synth_checkpoint
dev_args=()
[ -n "$device" ] && dev_args=(--device "$device")

model="$dir/llama8b-L$layers"
if [ ! -f "$model/model.safetensors.index.json" ]; then
    mkdir -p "$dir"
    "$synth" "$model" --layers "$layers" --shard-gb "$shard_gb" >&2
fi
shards=("$model"/model-*.safetensors)
in_bytes=$(cat "${shards[@]}" | wc -c)

can_drop=0
if [ "$cold" = 1 ] && sync && (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then can_drop=1; fi
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# Read rate of the input: `cat` to /dev/null, warm (second read) and cold (after dropping caches).
read_rate() { python3 - "$in_bytes" "$@" <<'EOF'
import subprocess, sys, time
n = int(sys.argv[1]); t = time.perf_counter()
subprocess.run(["cat", *sys.argv[2:]], stdout=subprocess.DEVNULL, check=True)
print(f"{n / (time.perf_counter() - t) / 1e6:.0f}")
EOF
}
read_rate "${shards[@]}" > /dev/null
disk_warm=$(read_rate "${shards[@]}")
disk_cold="-"
if [ "$can_drop" = 1 ]; then drop; disk_cold=$(read_rate "${shards[@]}"); fi

# The kernels' own input rate on the largest Llama-8B weight (14336 x 4096), as the pipeline calls them.
kernel_rate() {  # op dtype [extra args]
    "$LOWBIT" "${dev_args[@]}" --json bench --op "$1" --shape 14336x4096 --dtype "$2" "${@:3}" |
        python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"{14336*4096*2/d['median_s']/1e6:.0f}\")"
}

largest=$((14336 * 4096 * 2))
[ "$layers" -ge 1 ] && largest=$((128256 * 4096 * 2))  # embedding / lm_head (copied, not quantized)
echo "# lowbit quantize: $model ($((in_bytes / 1000000)) MB in ${#shards[@]} shard(s), $layers layers)"
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# disk read (cat): warm $disk_warm MB/s, cold $disk_cold MB/s; largest tensor $((largest >> 20)) MiB"
printf "| %-7s | %-4s | %8s | %8s | %9s | %9s | %8s | %10s | %8s |\n" format run seconds "in MB/s" "out MB/s" \
    "kernel" "disk" "of lower" "peak MiB"
printf "|%s|\n" "---------|------|----------|----------|-----------|-----------|----------|------------|----------"
for f in $formats; do
    case "$f" in
        nf4|fp4) k=$(kernel_rate quantize_4bit bf16 --format "$f") ;;
        int8) k=$(kernel_rate int8_vectorwise_quant f16) ;;
        ternary) k=$(kernel_rate ternary_quantize bf16) ;;
        *) echo "unknown format $f" >&2; exit 2 ;;
    esac
    extra=()
    [ "$f" = ternary ] && extra=(--allow-ptq-ternary)
    runs="warm"
    [ "$can_drop" = 1 ] && runs="warm cold"
    for run in $runs; do
        out="$dir/out-$f"
        rm -rf "$out"
        if [ "$run" = cold ]; then drop; else cat "${shards[@]}" > /dev/null; fi
        "$LOWBIT" "${dev_args[@]}" --json -q quantize "$model" "$out" --format "$f" "${extra[@]}" > "$dir/report.json"
        disk=$disk_warm
        [ "$run" = cold ] && disk=$disk_cold
        python3 - "$dir/report.json" "$f" "$run" "$k" "$disk" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); f, run, k, disk = sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
lower = min(k, disk)
print(f"| {f:<7} | {run:<4} | {r['seconds']:8.2f} | {r['input_mb_per_s']:8.0f} | {r['output_mb_per_s']:9.0f} | "
      f"{k:9.0f} | {disk:8.0f} | {100 * r['input_mb_per_s'] / lower:9.0f}% | {r['peak_rss_bytes'] / 2**20:8.0f} |")
EOF
        rm -rf "$out"
    done
done
rm -f "$dir/report.json"
[ "$can_drop" = 1 ] || echo "# cold runs skipped: the page cache cannot be dropped here (needs root)"
[ "$keep" = 1 ] || rm -rf "$model"
