"""Issue 12: the old pretraining loop (its own loop in methods/coprocessor_pretrain.py at commit bbf8cf2) against
the pretraining objective trained by training.train, on the same tiny config and the same No-CoT Base:
perplexities before / after, last logged loss, seconds. Usage: python compare.py OUT_ROOT (from the repo root)."""
import json, subprocess, sys, time, types
from latentreason.config import load_config
from latentreason.pretraining import pretrain_coprocessor

OLD_COMMIT = "bbf8cf2"
old = types.ModuleType("old_pretrain")
exec(subprocess.run(["git", "show", f"{OLD_COMMIT}:src/latentreason/methods/coprocessor_pretrain.py"], check=True,
                    capture_output=True, text=True).stdout, old.__dict__)
root = sys.argv[1]
common = ["task.name=countdown", "task.branching=3", "task.train_size=256", "task.eval_size=32", "task.stream=false",
          "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.tokenizer_vocab_size=300",
          "method.name=coprocessor", "method.n_latents=2", "method.coprocessor.pretrain_points=4", "method.coprocessor.pretrain_ahead=4",
          "method.coprocessor.pretrain_seq_len=32", "train.batch_size=16", "train.max_steps=60", "train.epochs=10",
          "train.warmup_steps=5", "train.lr=3e-3", "train.log_every=10"]
from latentreason.training import train
train(load_config(None, [*common, "method.name=no_cot", "train.max_steps=40", f"out_dir={root}/base"]), progress=False, evaluate_at_end=False)
out = {}
for name, fn in (("old_loop", old.pretrain_coprocessor), ("new_loop", pretrain_coprocessor)):
    began = time.perf_counter()
    s = fn(load_config(None, [*common, f"train.init_from={root}/base", f"out_dir={root}/{name}"]), progress=False)
    last = [json.loads(l) for l in open(f"{root}/{name}/metrics.jsonl")][-1]
    out[name] = {"before": s["before"], "after": s["after"], "steps": s["steps"], "last_logged_loss": last["loss"], "wall_s": round(time.perf_counter() - began, 1)}
print(json.dumps(out, indent=2))
