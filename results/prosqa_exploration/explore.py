"""Exploration: train with the project's method/build_run, eval every K steps (acc, names-option)."""
import json, math, re, sys, time, random
from pathlib import Path
import torch
from latentreason.config import load_config
from latentreason.training import build_run, lr_factor, seed_everything
from latentreason.evaluation import evaluate
from latentreason.tasks import get_task
from latentreason.tokenization import encode_examples

args = sys.argv[1:]
out = Path(args[0]); out.mkdir(parents=True, exist_ok=True)
extra = dict(a.split("=", 1) for a in args[1:] if a.startswith("x."))
overrides = [a for a in args[1:] if not a.startswith("x.")]
cfg = load_config(None, overrides)
every = int(extra.get("x.every", 250)); n_eval = int(extra.get("x.n_eval", 300))
train_params = json.loads(extra.get("x.train_params", "null") or "null")
torch.set_num_threads(int(extra.get("x.threads", 1)))
t0 = time.time()
run = build_run(cfg, None)
m = run.method
if train_params is not None:
    task = get_task(cfg.task.name)
    ex = task.generate(cfg.task.train_size, cfg.task.seed, **train_params)
    run.train_set = encode_examples(m.tokenizer, ex)
print("build", time.time() - t0, "train", len(run.train_set), "params", sum(p.numel() for p in m.parameters()), flush=True)
lens = [len(e.question_ids) + len(e.answer_ids) + sum(len(s) for s in e.step_ids) for e in run.train_set[:500]] if hasattr(run.train_set[0], "question_ids") else []
if lens: print("mean len", sum(lens)/len(lens), "max", max(lens), flush=True)
tc = cfg.train
n = len(run.train_set); per = tc.batch_size
total = tc.max_steps or (n // per) * tc.epochs
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95))
sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tc.warmup_steps, total))
evalset = run.eval_set[:n_eval]; trainsub = run.train_set[:200]
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
log = open(out / "curve.jsonl", "w")
step = 0; began = time.time(); losses = []
m.train()
while step < total:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed * 1000 + step)).tolist()
    for i in range(0, n - per + 1, per):
        batch = m.collate([run.train_set[j] for j in order[i:i+per]])
        loss = m(batch); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), tc.max_grad_norm)
        opt.step(); sch.step(); opt.zero_grad(set_to_none=True)
        losses.append(loss.item()); step += 1
        if step % every == 0 or step == total:
            acc, named = diag("eval", evalset); tacc, _ = diag("train", trainsub)
            rec = {"step": step, "loss": sum(losses[-every:]) / len(losses[-every:]), "acc": acc, "named": named, "train_acc": tacc, "min": (time.time() - began) / 60}
            print(json.dumps(rec), flush=True); log.write(json.dumps(rec) + "\n"); log.flush()
            m.train()
        if step >= total: break
