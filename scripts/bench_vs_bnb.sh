#!/usr/bin/env bash
# lowbit's fast CPU kernels vs bitsandbytes' CPU backend on identical shapes; prints a markdown table.
# Usage: scripts/bench_vs_bnb.sh   (creates scripts/.venv with torch + bitsandbytes on first run)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=scripts/.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch bitsandbytes numpy
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/python" scripts/bench_bitsandbytes_cpu.py > "$tmp/bnb.jsonl"
cargo bench -p lowbit --no-default-features --bench cpu_fast -- --output-format bencher \
  2>/dev/null | grep '^test ' > "$tmp/lowbit.txt"
python3 - "$tmp/bnb.jsonl" "$tmp/lowbit.txt" <<'PY'
import json, re, sys
bnb = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        if "bench" in r:
            bnb[r["bench"]] = r
print("| bench | lowbit | bitsandbytes CPU | bnb / lowbit |")
print("|---|---|---|---|")
for line in open(sys.argv[2]):
    m = re.match(r"test (\S+) \.\.\. bench:\s+([\d,]+) ns/iter", line)
    if not m:
        continue
    name, ns = m.group(1), int(m.group(2).replace(",", ""))
    b = bnb.get(name)
    other = f"{b['seconds'] * 1e3:.2f} ms ({b['what']})" if b else "n/a"
    ratio = f"{b['seconds'] * 1e9 / ns:.1f}x" if b else "n/a"
    print(f"| {name} | {ns / 1e6:.2f} ms | {other} | {ratio} |")
PY
