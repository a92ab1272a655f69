"""Exploration 2: fresh data every step with an optional curriculum over task params (phases)."""
import json, sys, time, re
from pathlib import Path
import torch
from latentreason.config import load_config
from latentreason.training import build_run, lr_factor
from latentreason.evaluation import evaluate
from latentreason.tasks import get_task
from latentreason.tokenization import encode_examples

args = sys.argv[1:]
out = Path(args[0]); out.mkdir(parents=True, exist_ok=True)
extra = dict(a.split("=", 1) for a in args[1:] if a.startswith("x."))
overrides = [a for a in args[1:] if not a.startswith("x.")]
cfg = load_config(None, overrides)
every = int(extra.get("x.every", 250)); n_eval = int(extra.get("x.n_eval", 300))
phases = json.loads(extra.get("x.phases", "null") or "null")  # [[until_step, {params}], ...]
torch.set_num_threads(int(extra.get("x.threads", 1)))
torch.manual_seed(cfg.train.seed)
t0 = time.time()
cfg.task.train_size = 64  # tokenizer/vocab built from a small set + eval; training data streams below
run = build_run(cfg, None)
m = run.method
task = get_task(cfg.task.name)
tc = cfg.train
total = tc.max_steps; per = tc.batch_size
print("build", round(time.time() - t0, 1), "params", sum(p.numel() for p in m.parameters()), flush=True)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95))
sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tc.warmup_steps, total))
evalset = run.eval_set[:n_eval]
opt_re = re.compile(r"Is (\w+) a (\w+) or (\w+)\?")
def diag(split, exs):
    s = evaluate(m, run.task, exs, 100, cfg.eval.max_new_tokens, out / f"ev_{split}", False)
    preds = [json.loads(l) for l in open(out / f"ev_{split}" / "predictions.jsonl")]
    named = 0
    for p in preds:
        mm = opt_re.search(p["question"])
        g = p["generated"].split("###")[-1].strip().rstrip(".").split()
        if mm and g and g[-1] in (mm.group(2), mm.group(3)): named += 1
    return s["accuracy"], named / len(preds)
def params_at(step):
    if not phases: return dict(cfg.task.params)
    for until, p in phases:
        if step < until: return p
    return phases[-1][1]
log = open(out / "curve.jsonl", "w")
step = 0; began = time.time(); losses = []
cur = None; gen = None; chunk = 0
m.train()
while step < total:
    p = params_at(step)
    if p != cur:
        cur = p; chunk += 1
        gen = task.iter_generate(10**9, seed=1000 + chunk, **p)
    exs = [next(gen) for _ in range(per)]
    batch = m.collate(encode_examples(m.tokenizer, exs))
    loss = m(batch); loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), tc.max_grad_norm)
    opt.step(); sch.step(); opt.zero_grad(set_to_none=True)
    losses.append(loss.item()); step += 1
    if step % every == 0 or step == total:
        acc, named = diag("eval", evalset)
        rec = {"step": step, "loss": round(sum(losses[-every:]) / len(losses[-every:]), 4), "acc": acc, "named": named, "params": cur, "min": round((time.time() - began) / 60, 2)}
        print(json.dumps(rec), flush=True); log.write(json.dumps(rec) + "\n"); log.flush()
        m.train()
