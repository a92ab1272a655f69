"""Plateau probe: a plain LlamaForCausalLM (no project code in the loop) on fresh ProsQA problems.

Env: D (width, 256), H (heads, 8), HD (head dim, D/H), NL (layers, 2), LR (1e-3), BS (32), STEPS (4000),
NODES ("4": n_nodes; "4-10" draws each problem's size uniformly), DEPTH ("1-1"), SEED (0),
LAST (0): for the first LAST steps, move the asked person's own facts right before the question (a positional
crutch: "copy the concept of the last fact" works there, so the copy path can form before the lookup),
ZI (0; 1 = zero-initialise every attention output and MLP down projection, so each block starts as the identity).
Prints every 100 steps: step, train loss, seq-acc (teacher-forced argmax = whole answer, on 200 fresh
problems of the largest size), seconds.
"""
import os, random, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from latentreason.config import load_config
from latentreason.training import build_run
from latentreason.tasks import get_task

E = os.environ.get
D, H = int(E("D", "256")), int(E("H", "8")); HD = int(E("HD", str(D // H))); NL = int(E("NL", "2"))
LR, BS, STEPS, SEED = float(E("LR", "1e-3")), int(E("BS", "32")), int(E("STEPS", "4000")), int(E("SEED", "0"))
lo, _, hi = E("NODES", "4").partition("-"); lo = int(lo); hi = int(hi or lo)
dlo, _, dhi = E("DEPTH", "1-1").partition("-"); dlo, dhi = int(dlo), int(dhi or dlo)
torch.manual_seed(SEED); torch.set_num_threads(1)
cfg = load_config(None, ["task.name=prosqa", "task.eval_size=10", "task.train_size=64", "task.params.n_nodes=10",
                         "task.params.min_depth=1", "task.params.max_depth=1", "model.backbone=llama-tiny", "method.name=no_cot"])
tok = build_run(cfg, None).method.tokenizer
model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=4 * D, num_hidden_layers=NL,
    num_attention_heads=H, num_key_value_heads=H, head_dim=HD, max_position_embeddings=1024, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=1, pad_token_id=0))
if E("ZI", "0") == "1":
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_(); layer.mlp.down_proj.weight.zero_()
opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.95))
task = get_task("prosqa"); rng = random.Random(SEED)
gens = {n: task.iter_generate(10**9, seed=SEED * 1000 + n, n_nodes=n, min_depth=dlo, max_depth=dhi) for n in range(lo, hi + 1)}
held = task.iter_generate(10**9, seed=999, n_nodes=hi, min_depth=dlo, max_depth=dhi)

import re
def asked_fact_last(e):
    """The same problem with the asked person's facts moved to the end of the fact list."""
    facts, question = e.question.rsplit(". Is ", 1)
    person = question.split()[0]
    sentences = facts.split(". ")
    mine = [f for f in sentences if f.split()[0] == person]
    return type(e)(". ".join([f for f in sentences if f.split()[0] != person] + mine) + ". Is " + question, e.steps, e.answer, e.meta)

LAST = int(E("LAST", "0"))

def batch(exs):
    seqs, labs = [], []
    for e in exs:
        q = tok(e.question + "\n")["input_ids"]; a = tok("### " + e.answer)["input_ids"] + [tok.eos_token_id]
        seqs.append(q + a); labs.append([-100] * len(q) + a)
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (L - len(s)) for s in seqs]); lab = torch.tensor([x + [-100] * (L - len(x)) for x in labs])
    mask = (torch.arange(L)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    return ids, lab, mask

test = batch([next(held) for _ in range(200)])
print(f"D={D} H={H} HD={HD} NL={NL} LR={LR} BS={BS} NODES={lo}-{hi} DEPTH={dlo}-{dhi} SEED={SEED} "
      f"ZI={E('ZI', '0')} LAST={LAST} params={sum(p.numel() for p in model.parameters())/1e6:.2f}M", flush=True)
t0 = time.time()
for step in range(1, STEPS + 1):
    exs = [next(gens[rng.randint(lo, hi)]) for _ in range(BS)]
    ids, lab, mask = batch([asked_fact_last(e) for e in exs] if step <= LAST else exs)
    out = model(input_ids=ids, attention_mask=mask, labels=lab)
    out.loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()
    if step % 100 == 0:
        with torch.no_grad():
            ids, lab, mask = test
            pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1); tgt = lab[:, 1:]
            ok = ((pred == tgt) | (tgt == -100)).all(1).float().mean().item()
        print(step, round(out.loss.item(), 4), "seq-acc", round(ok, 3), round(time.time() - t0), flush=True)
