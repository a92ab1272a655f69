#!/usr/bin/env bash
# One-command GPU check (issue 14): every benchmark at GPT-2-small size in bf16 with regional compile, plus a
# 2-minute training run of CoT and of Coconut on ProsQA, all written under one results folder; prints the MFU
# of the CoT and latent training steps against the targets (>= 40% CoT step, >= 25% latent step).
#
#   benchmarks/gpu.sh [--out DIR]        on a CUDA machine (budget: < 10 min wall on an H100/H200)
#   benchmarks/gpu.sh --dry [--out DIR]  tiny sizes, a few steps, on CPU (tests/test_gpu_script.py runs it)
#
# Installs nothing: it needs only the README's set-up (the package and torch in the active environment;
# PYTHON overrides the interpreter). Every step's stdout/stderr goes to DIR/<step>.log; a failing step is
# recorded in DIR/FAILED and the script goes on to the next one (one device session must yield everything
# it can), then exits non-zero. DIR/COMMAND.md lists the exact commands.
set -uo pipefail

DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--dry] [--out DIR]" >&2; exit 2 ;;
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
  RUN_SECONDS=60
  RUN=(model.n_layer=1 model.n_embd=32 model.n_head=2 task.train_size=16 task.eval_size=2 train.batch_size=4
       train.max_steps=2 train.precision=fp32 eval.batch_size=2 eval.max_new_tokens=4)
else
  # GPT-2 small body (12 x 768), bf16 autocast; training steps with regional compile (decoding benchmarks
  # without: their shapes change every call). Short sequences need large batches to fill the GPU; --warmup
  # covers compilation (not timed). Sized for ~10 min on an H100/H200 (an estimate: never run yet).
  COMMON=(--device cuda --dtype bf16 --size small --repeats 10 --warmup 3)
  COMPILE=(--compile)
  TRAIN_BENCH=(--batch-size 128 --train-size 2560 --steps 60 --skip 20 --log-every 10 --repeats 1 --warmup 0)
  LATENT=(--batch-size 256 --ks 6 --no-naive --no-reference)
  REFERENCE=(--batch-size 32 --ks 6 --variants '' --no-naive --repeats 3 --warmup 1)
  EVAL=(--batch-size 16 --max-new-tokens 16 --repeats 2 --warmup 1)
  PRETRAIN=(--batch-size 64 --points 4,16)
  LOOPED=(--batch-size 64 --max-new-tokens 32 --repeats 3 --warmup 1)
  HEAD=(--batch-size 64 --ks 6 --repeats 5)
  RUN_SECONDS=120
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
rm -f "$OUT/FAILED"

step() {  # step NAME COMMAND...: run, log, record failures, never stop the script
  local name="$1"; shift
  echo "    $*" >> "$OUT/COMMAND.md"
  local began=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then
    echo "[$((SECONDS - began))s] $name: ok"
  else
    echo "[$((SECONDS - began))s] $name: FAILED (see $OUT/$name.log)"
    echo "$name" >> "$OUT/FAILED"
  fi
}

B=benchmarks
step train_loop     "$PYTHON" $B/bench_train.py        "${COMMON[@]}" "${COMPILE[@]}" "${TRAIN_BENCH[@]}" --out "$OUT/train_loop.json"
step latent_step    "$PYTHON" $B/bench_latent_step.py  "${COMMON[@]}" "${COMPILE[@]}" "${LATENT[@]}" --out "$OUT/latent_step.json"
step coconut_vs_reference "$PYTHON" $B/bench_latent_step.py "${COMMON[@]}" "${COMPILE[@]}" "${REFERENCE[@]}" --profile --out "$OUT/coconut_vs_reference.json"
step eval           "$PYTHON" $B/bench_eval.py         "${COMMON[@]}" "${EVAL[@]}" --out "$OUT/eval.json"
step pretrain       "$PYTHON" $B/bench_pretrain.py     "${COMMON[@]}" "${COMPILE[@]}" "${PRETRAIN[@]}" --out "$OUT/pretrain.json"
step looped         "$PYTHON" $B/bench_looped.py       "${COMMON[@]}" "${LOOPED[@]}" --out "$OUT/looped.json"
step coconut_head   "$PYTHON" $B/bench_coconut_head.py "${COMMON[@]}" "${COMPILE[@]}" "${HEAD[@]}" --out "$OUT/coconut_head.json"

# Training runs on ProsQA, stopped after RUN_SECONDS (SIGINT: the loop checkpoints and stops); their
# metrics.jsonl holds steps, loss and elapsed time. The dry run stops after max_steps and evaluates.
for method in cot coconut; do
  extra=(method.name=$method)
  if [ "$method" = coconut ]; then extra+=(method.n_latents=6 train.init_from=null); fi
  echo "    timeout -s INT $RUN_SECONDS $PYTHON -m latentreason.cli train configs/coconut_prosqa.yaml out_dir=$OUT/run_$method ${RUN[*]} ${extra[*]}" >> "$OUT/COMMAND.md"
  began=$SECONDS
  timeout -s INT "$RUN_SECONDS" "$PYTHON" -m latentreason.cli train configs/coconut_prosqa.yaml "out_dir=$OUT/run_$method" \
    train.init_from=null "${RUN[@]}" "${extra[@]}" > "$OUT/run_$method.log" 2>&1
  rc=$?
  if [ -s "$OUT/run_$method/metrics.jsonl" ] && { [ $rc = 0 ] || [ $rc = 124 ] || [ $rc = 130 ]; }; then
    echo "[$((SECONDS - began))s] run_$method: ok (exit $rc)"
  else
    echo "[$((SECONDS - began))s] run_$method: FAILED (exit $rc, see $OUT/run_$method.log)"; echo "run_$method" >> "$OUT/FAILED"
  fi
done

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
failed = out / "FAILED"
lines.append("")
lines.append("failed steps: " + (", ".join(failed.read_text().split()) if failed.exists() else "none"))
print("\n".join(lines))
EOF
cat "$OUT/SUMMARY.md"
echo "results: $OUT"
[ ! -e "$OUT/FAILED" ]
