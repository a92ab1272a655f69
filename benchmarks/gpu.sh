#!/usr/bin/env bash
# One-command GPU check (issue 14): CUDA against CPU for every method (tests/test_cuda.py), every benchmark at
# GPT-2-small size in bf16 with regional compile, plus a 1-minute training run of CoT and of Coconut on ProsQA,
# all written under one results folder; prints the MFU of the CoT and latent training steps against the targets
# (>= 40% CoT step, >= 25% latent step).
#
#   benchmarks/gpu.sh [--budget S] [--out DIR]   on a CUDA machine (about 8 min on an H200 without a budget)
#   benchmarks/gpu.sh --dry [--out DIR]          tiny sizes, a few steps, on CPU (tests/test_gpu_script.py runs it)
#
# --budget S: the whole check stops within S seconds. Steps run in order of importance, each under its own time
# cap (less where less of the budget is left); a step that no longer fits is skipped and listed as such, and a
# step stopped at its cap counts as failed. Device time is scarce: one call should return whatever it can.
# --only cuda_tests,latent_step,...: run these steps alone (a second call that re-checks what failed).
#
# Installs nothing: it needs only the README's set-up (the package and torch in the active environment;
# PYTHON overrides the interpreter). Every step's stdout/stderr goes to DIR/<step>.log; a failing step is
# recorded in DIR/FAILED and the script goes on to the next one (one device session must yield everything
# it can), then exits non-zero. DIR/COMMAND.md lists the exact commands.
set -uo pipefail

DRY=0
OUT=""
BUDGET=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --only) ONLY=",$2,"; shift ;;
    *) echo "usage: $0 [--dry] [--budget SECONDS] [--only STEP,STEP...] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
STAMP="$(date -u +%Y%m%d-%H%M%S)"
if [ -z "$OUT" ]; then
  if [ "$DRY" = 1 ]; then OUT="$ROOT/runs/gpu_dry_$STAMP"; else OUT="$ROOT/results/bench/gpu_$STAMP"; fi
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

if [ "$DRY" = 1 ]; then
  # CPU, tiny model, one timed repeat: checks that every command still runs, measures nothing.
  COMMON=(--device cpu --size tiny --threads 1 --repeats 1 --warmup 0)
  COMPILE=()
  TRAIN_BENCH=(--batch-size 4 --train-size 16 --steps 2 --skip 1 --log-every 1)
  LATENT=(--batch-size 4 --ks 2 --variants liu --no-naive --no-reference)
  REFERENCE=(--batch-size 2 --ks 2 --variants '' --no-naive)
  EVAL=(--batch-size 2 --max-new-tokens 4)
  PRETRAIN=(--batch-size 1 --seq-len 32 --points 4 --ahead 4)
  LOOPED=(--batch-size 2 --max-new-tokens 4 --gate-lambda 0.3)
  HEAD=(--batch-size 2 --ks 2 --vocab-sizes 0)
  PREFILL=(--batch-size 2 --max-new-tokens 2 --head-vocab 0)
  RUN_SECONDS=60
  STEP_CAP=600   # seconds per step (CPU, tiny: never reached)
  TESTS=()
  RUN=(model.n_layer=1 model.n_embd=32 model.n_head=2 task.train_size=16 task.eval_size=2 train.batch_size=4
       train.max_steps=2 train.precision=fp32 eval.batch_size=2 eval.max_new_tokens=4)
else
  # GPT-2 small body (12 x 768), bf16 autocast; training steps with regional compile (decoding benchmarks
  # without: their shapes change every call). Short sequences need large batches to fill the GPU; --warmup
  # covers compilation (not timed). Each benchmark step is capped at STEP_CAP seconds.
  COMMON=(--device cuda --dtype bf16 --size small --repeats 10 --warmup 3)
  COMPILE=(--compile)
  TRAIN_BENCH=(--batch-size 128 --train-size 2560 --steps 40 --skip 15 --log-every 5 --repeats 1 --warmup 0
               --sides minimal,minimal+host,project,project+bucket)
  LATENT=(--batch-size 256 --ks 6 --no-naive --no-reference --repeats 5)
  REFERENCE=(--batch-size 32 --ks 6 --variants '' --no-naive --repeats 3 --warmup 1)
  EVAL=(--batch-size 16 --max-new-tokens 16 --repeats 2 --warmup 1)
  PRETRAIN=(--batch-size 64 --points 4,16)
  LOOPED=(--batch-size 64 --max-new-tokens 32 --repeats 3 --warmup 1)
  HEAD=(--batch-size 64 --ks 6 --repeats 5)
  PREFILL=(--batch-size 64 --max-new-tokens 16 --repeats 5)   # SmolLM2's 49k vocabulary (the default --head-vocab)
  RUN_SECONDS=60
  STEP_CAP=120   # seconds per benchmark step at most
  # The CUDA tests in parallel where pytest-xdist is installed (many small models: CPU-bound set-up, compiles),
  # one line per test as it ends (a step stopped at its cap still names what passed), each test capped where
  # pytest-timeout is installed (one stuck test must not take the step's whole cap).
  TESTS=(-v)
  if "$PYTHON" -c "import xdist" 2>/dev/null; then TESTS+=(-n 8); fi
  if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then TESTS+=(--timeout 90); fi
  RUN=(model.n_layer=12 model.n_embd=768 model.n_head=12 task.train_size=4000 task.eval_size=200 train.batch_size=128
       train.epochs=100 train.compile=true train.precision=bf16 train.log_every=10 eval.batch_size=200 eval.max_new_tokens=48)
fi

echo "# GPU check $STAMP (dry=$DRY)" > "$OUT/COMMAND.md"
echo >> "$OUT/COMMAND.md"
"$PYTHON" - > "$OUT/env.json" <<'EOF' || true
import json, platform, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
print(json.dumps(info))
EOF
rm -f "$OUT/FAILED" "$OUT/SKIPPED"

time_left() {  # seconds of the budget left (a large number without a budget)
  if [ "$BUDGET" -gt 0 ]; then echo $((BUDGET - SECONDS)); else echo 999999; fi
}

runs() {  # runs NAME: false when --only leaves NAME out, or (recorded as skipped) when under 30 s of the budget is left
  [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]] || return 1
  local left; left=$(time_left)
  if [ "$left" -lt 30 ]; then
    echo "[0s] $1: skipped (${left}s of the budget left)"; echo "$1" >> "$OUT/SKIPPED"; return 1
  fi
}

step() {  # step NAME CAP COMMAND...: run under min(CAP, budget left), log, record failures, never stop the script
  local name="$1" cap="$2"; shift 2
  runs "$name" || return 0
  local left; left=$(time_left)
  [ "$left" -lt "$cap" ] && cap=$left
  echo "    $*" >> "$OUT/COMMAND.md"
  local began=$SECONDS
  timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ $rc = 0 ]; then
    echo "[$((SECONDS - began))s] $name: ok"
  else
    local why="exit $rc"; [ $rc = 124 ] && why="stopped at its ${cap}s cap"
    echo "[$((SECONDS - began))s] $name: FAILED ($why; see $OUT/$name.log)"
    echo "$name" >> "$OUT/FAILED"
  fi
}

run_training() {  # run_training METHOD: a training run on ProsQA, stopped after RUN_SECONDS (SIGINT: the loop
  # checkpoints and stops); its metrics.jsonl holds steps, loss and elapsed time. The dry run stops after
  # max_steps and evaluates.
  local method="$1"
  runs "run_$method" || return 0
  local left; left=$(time_left)
  local seconds=$RUN_SECONDS; [ "$left" -lt $((seconds + 20)) ] && seconds=$((left - 20))
  local extra=(method.name=$method)
  if [ "$method" = coconut ]; then extra+=(method.n_latents=6 train.init_from=null); fi
  echo "    timeout -s INT $seconds $PYTHON -m latentreason.cli train configs/coconut_prosqa.yaml out_dir=$OUT/run_$method ${RUN[*]} ${extra[*]}" >> "$OUT/COMMAND.md"
  local began=$SECONDS
  timeout -k 20 -s INT "$seconds" "$PYTHON" -m latentreason.cli train configs/coconut_prosqa.yaml "out_dir=$OUT/run_$method" \
    train.init_from=null "${RUN[@]}" "${extra[@]}" > "$OUT/run_$method.log" 2>&1
  local rc=$?
  if [ -s "$OUT/run_$method/metrics.jsonl" ] && { [ $rc = 0 ] || [ $rc = 124 ] || [ $rc = 130 ]; }; then
    echo "[$((SECONDS - began))s] run_$method: ok (exit $rc)"
  else
    echo "[$((SECONDS - began))s] run_$method: FAILED (exit $rc, see $OUT/run_$method.log)"; echo "run_$method" >> "$OUT/FAILED"
  fi
}

# In order of importance: correctness on the device first, then the MFU targets, real training, the rest.
B=benchmarks
step cuda_tests 240 env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" tests/test_cuda.py
step latent_step "$STEP_CAP" "$PYTHON" $B/bench_latent_step.py "${COMMON[@]}" "${COMPILE[@]}" "${LATENT[@]}" --out "$OUT/latent_step.json"
step train_loop  "$STEP_CAP" "$PYTHON" $B/bench_train.py       "${COMMON[@]}" "${COMPILE[@]}" "${TRAIN_BENCH[@]}" --out "$OUT/train_loop.json"
run_training cot
run_training coconut
step eval        "$STEP_CAP" "$PYTHON" $B/bench_eval.py         "${COMMON[@]}" "${EVAL[@]}" --out "$OUT/eval.json"
step looped      "$STEP_CAP" "$PYTHON" $B/bench_looped.py       "${COMMON[@]}" "${LOOPED[@]}" --out "$OUT/looped.json"
step pretrain    "$STEP_CAP" "$PYTHON" $B/bench_pretrain.py     "${COMMON[@]}" "${COMPILE[@]}" "${PRETRAIN[@]}" --out "$OUT/pretrain.json"
step coconut_vs_reference "$STEP_CAP" "$PYTHON" $B/bench_latent_step.py "${COMMON[@]}" "${COMPILE[@]}" "${REFERENCE[@]}" --profile --out "$OUT/coconut_vs_reference.json"
step coconut_head "$STEP_CAP" "$PYTHON" $B/bench_coconut_head.py "${COMMON[@]}" "${COMPILE[@]}" "${HEAD[@]}" --out "$OUT/coconut_head.json"
step prefill_head "$STEP_CAP" "$PYTHON" $B/bench_prefill_head.py "${COMMON[@]}" "${PREFILL[@]}" --out "$OUT/prefill_head.json"

"$PYTHON" - "$OUT" > "$OUT/SUMMARY.md" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["# GPU check summary", ""]
def rows(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []
def pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"
targets = {"cot": 0.40, "coconut": 0.25, "coprocessor": 0.25}
for row in rows("latent_step"):
    kind = row["name"].split("@")[0].split("-")[0]
    target = targets.get(kind)
    verdict = "" if target is None or row.get("mfu") is None else (" (target >= %d%%: %s)" % (100 * target, "met" if row["mfu"] >= target else "MISSED"))
    lines.append(f"- MFU {row['name']}: {pct(row.get('mfu'))}{verdict}")
for row in rows("train_loop"):
    lines.append(f"- train loop {row['name']}: {row['tokens/s']:.0f} tokens/s, MFU {pct(row.get('mfu'))}")
for method in ("cot", "coconut"):
    metrics = out / f"run_{method}" / "metrics.jsonl"
    if metrics.exists() and metrics.read_text().strip():
        records = [json.loads(l) for l in metrics.read_text().splitlines()]
        lines.append(f"- run {method}: {records[-1]['step']} steps in {records[-1]['elapsed_s']:.0f} s, loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}")
prefill = out / "prefill_head.json"
if prefill.exists():
    summary = json.loads(prefill.read_text())["summary"]
    lines.append("- generation prefill, LM head on every position / on the last: time " + summary["all / last time (median, min)"]
                 + f", identical answers: {summary['identical greedy answers']}")
tests = out / "cuda_tests.log"
if tests.exists() and tests.read_text().strip():
    lines.append(f"- CUDA tests: {tests.read_text().strip().splitlines()[-1]}")
lines.append("")
for name, label in (("FAILED", "failed steps"), ("SKIPPED", "skipped steps (budget)")):
    listed = out / name
    lines.append(f"{label}: " + (", ".join(listed.read_text().split()) if listed.exists() else "none"))
print("\n".join(lines))
EOF
cat "$OUT/SUMMARY.md"
echo "results: $OUT"
[ ! -e "$OUT/FAILED" ] && [ ! -e "$OUT/SKIPPED" ]  # non-zero: a step failed or did not fit the budget
