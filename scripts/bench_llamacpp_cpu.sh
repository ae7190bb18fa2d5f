#!/usr/bin/env bash
# Side-by-side CPU decode / prefill tokens/s at batch 1: lowbit `generate` vs llama.cpp `llama-bench`,
# on one model, in one sitting, alternating between the two for REPS rounds. Prints a markdown table.
#
# Nothing here downloads anything and no test needs it. Prepare the inputs first (see docs/PERFORMANCE.md,
# "lowbit vs llama.cpp on CPU"): a llama.cpp build (llama-bench), one or more GGUF files of the model, and the
# same model as a Hugging Face directory (config.json, model.safetensors, tokenizer.json) for lowbit.
#
# Usage:
#   scripts/bench_llamacpp_cpu.sh HF_DIR GGUF [GGUF ...]
# Environment (all optional):
#   LLAMA_BENCH     path of llama-bench                          (default: llama-bench on PATH)
#   LOWBIT          path of the lowbit binary                    (default: target/release/lowbit)
#   FORMATS         lowbit formats, space separated; FORMAT:int8 adds --activations int8
#                                                                (default: "nf4 nf4:int8 none:int8 int8")
#   THREADS         threads for both (llama-bench -t, RAYON_NUM_THREADS for lowbit) (default: 2)
#   REPS            rounds; each round runs every configuration once   (default: 3)
#   LLAMA_REPS      llama-bench -r inside one round              (default: 3)
#   N_GEN           tokens to generate                           (default: 128)
#   N_PROMPT        prompt tokens for prefill                    (default: 512)
#   PROMPT          decode prompt for lowbit                     (default: "The capital of France is")
#   PYTHON          a python3 for parsing JSON                   (default: python3)
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
HF_DIR=$1
shift
GGUFS=("$@")
LLAMA_BENCH=${LLAMA_BENCH:-llama-bench}
LOWBIT=${LOWBIT:-target/release/lowbit}
FORMATS=${FORMATS:-nf4 nf4:int8 none:int8 int8}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
LLAMA_REPS=${LLAMA_REPS:-3}
N_GEN=${N_GEN:-128}
N_PROMPT=${N_PROMPT:-512}
PROMPT=${PROMPT:-The capital of France is}
PYTHON=${PYTHON:-python3}

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# A prompt of about N_PROMPT tokens for lowbit's prefill: repeated plain text, cut by lowbit's own token count
# (the first probe run tells how many tokens one repetition is).
UNIT="The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the valley. "
probe=$(RAYON_NUM_THREADS=$THREADS "$LOWBIT" --device cpu --json -q generate "$HF_DIR" --format none \
    --prompt "$UNIT$UNIT$UNIT$UNIT$UNIT$UNIT$UNIT$UNIT" --max-tokens 1)
per8=$(echo "$probe" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["prompt_tokens"])')
n_units=$(( (N_PROMPT * 8 + per8 - 1) / per8 ))
LONG_PROMPT=$("$PYTHON" -c "import sys; print(sys.argv[1] * int(sys.argv[2]), end='')" "$UNIT" "$n_units")

for r in $(seq 1 "$REPS"); do
    for g in "${GGUFS[@]}"; do
        log "round $r: uptime:$(uptime | sed 's/.*load average/ load average/')"
        log "round $r: llama-bench $(basename "$g") tg$N_GEN"
        "$LLAMA_BENCH" -m "$g" -p 0 -n "$N_GEN" -t "$THREADS" -r "$LLAMA_REPS" -o json > "$OUT/llama_tg_$(basename "$g")_$r.json"
        log "round $r: llama-bench $(basename "$g") pp$N_PROMPT"
        "$LLAMA_BENCH" -m "$g" -p "$N_PROMPT" -n 0 -t "$THREADS" -r "$LLAMA_REPS" -o json > "$OUT/llama_pp_$(basename "$g")_$r.json"
    done
    for f in $FORMATS; do
        fmt=${f%%:*}
        act=float
        [ "$fmt" != "$f" ] && act=${f#*:}
        log "round $r: uptime:$(uptime | sed 's/.*load average/ load average/')"
        log "round $r: lowbit $f decode"
        RAYON_NUM_THREADS=$THREADS "$LOWBIT" --device cpu --json -q generate "$HF_DIR" --format "$fmt" \
            --activations "$act" --prompt "$PROMPT" --max-tokens "$N_GEN" > "$OUT/lowbit_tg_${f}_$r.json" \
            || echo '{"failed": true}' > "$OUT/lowbit_tg_${f}_$r.json"
        log "round $r: lowbit $f prefill"
        RAYON_NUM_THREADS=$THREADS "$LOWBIT" --device cpu --json -q generate "$HF_DIR" --format "$fmt" \
            --activations "$act" --prompt "$LONG_PROMPT" --max-tokens 1 > "$OUT/lowbit_pp_${f}_$r.json" \
            || echo '{"failed": true}' > "$OUT/lowbit_pp_${f}_$r.json"
    done
done

"$PYTHON" - "$OUT" "$REPS" "$N_GEN" "$N_PROMPT" "$THREADS" "$FORMATS" "${GGUFS[@]}" <<'EOF'
import json, os, statistics, sys
out, reps, n_gen, n_prompt, threads, formats = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6].split()
ggufs = sys.argv[7:]

def load(p):
    with open(p) as f:
        return json.load(f)

def fmt(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "failed", None
    m = statistics.median(xs)
    return f"{m:.1f} ({min(xs):.1f}-{max(xs):.1f})", m

rows = []
for g in ggufs:
    b = os.path.basename(g)
    tg = [load(f"{out}/llama_tg_{b}_{r}.json")[0]["avg_ts"] for r in range(1, reps + 1)]
    pp = [load(f"{out}/llama_pp_{b}_{r}.json")[0]["avg_ts"] for r in range(1, reps + 1)]
    meta = load(f"{out}/llama_tg_{b}_1.json")[0]
    name = f"llama.cpp {meta.get('model_type', b)} ({b}, build {meta.get('build_commit', '?')})"
    rows.append((name, fmt(tg), fmt(pp), ""))
for f in formats:
    tg = [load(f"{out}/lowbit_tg_{f}_{r}.json") for r in range(1, reps + 1)]
    pp = [load(f"{out}/lowbit_pp_{f}_{r}.json") for r in range(1, reps + 1)]
    gen = sorted({len(x.get("generated_ids", [])) for x in tg})
    ptoks = sorted({x.get("prompt_tokens") for x in pp if "prompt_tokens" in x})
    note = f"{'/'.join(map(str, gen))} tokens generated; prefill prompt {'/'.join(map(str, ptoks))} tokens"
    fmt_name, _, act = f.partition(":")
    rows.append((f"lowbit --format {fmt_name}" + (f" --activations {act}" if act else ""),
                 fmt([x.get("decode_tokens_per_s") for x in tg]),
                 fmt([x.get("prefill_tokens_per_s") for x in pp]), note))

base = [r for r in rows if r[0].startswith("llama.cpp")]
print(f"\nBatch 1, {threads} threads, median of {reps} rounds (min-max); llama.cpp figures are llama-bench averages "
      f"of its own repetitions (tg{n_gen}, pp{n_prompt}); ratios are against the first GGUF given.\n")
print(f"| engine / format | decode tok/s | prefill tok/s | decode vs {os.path.basename(ggufs[0])} | prefill vs it | note |")
print("|---|---|---|---|---|---|")
for name, (tgs, tgm), (pps, ppm), note in rows:
    rt = f"{tgm / base[0][1][1]:.2f}x" if tgm and base[0][1][1] else ""
    rp = f"{ppm / base[0][2][1]:.2f}x" if ppm and base[0][2][1] else ""
    print(f"| {name} | {tgs} | {pps} | {rt} | {rp} | {note} |")
EOF
