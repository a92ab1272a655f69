import sys, time, torch, random
from latentreason.config import load_config
from latentreason.training import build_run
from latentreason.tasks import get_task
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0); torch.set_num_threads(1)
cfg = load_config(None, ["task.name=prosqa","task.eval_size=10","task.train_size=64","task.params.n_nodes=4","task.params.min_depth=1","task.params.max_depth=1","model.backbone=llama-tiny","method.name=no_cot"])
run = build_run(cfg, None); tok = run.method.tokenizer
mode = sys.argv[1]; LR=float(sys.argv[2]); NL=int(sys.argv[3]); STD=float(sys.argv[4]); D=int(sys.argv[5]) if len(sys.argv)>5 else 128
V = len(tok)
model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=4*D, num_hidden_layers=NL, initializer_range=STD, num_attention_heads=int(__import__("os").environ.get("H","4")), num_key_value_heads=int(__import__("os").environ.get("H","4")), max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=0))
if mode == "framework": model = run.method.model
opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9,float(__import__("os").environ.get("B2","0.95"))))
task = get_task("prosqa"); gen = task.iter_generate(10**9, seed=5, n_nodes=4, min_depth=1, max_depth=1)
def batch(n):
    exs = [next(gen) for _ in range(n)]
    seqs, labs = [], []
    for e in exs:
        q = tok(e.question)["input_ids"]; a = tok(" " + e.answer.split(" is a ")[1])["input_ids"] if False else tok(" ### " + e.answer)["input_ids"] + [1]
        seqs.append(q + a); labs.append([-100]*len(q) + a)
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0]*(L-len(s)) for s in seqs]); lab = torch.tensor([l + [-100]*(L-len(l)) for l in labs])
    mask = (torch.arange(L)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    return ids, lab, mask, exs
t0=time.time()
for step in range(1, int(__import__("os").environ.get("STEPS","800"))+1):
    ids, lab, mask, _ = batch(32)
    out = model(input_ids=ids, attention_mask=mask, labels=lab)
    out.loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()
    if step % 100 == 0:
        with torch.no_grad():
            ids, lab, mask, exs = batch(200)
            logits = model(input_ids=ids, attention_mask=mask).logits
            pred = logits[:, :-1].argmax(-1); tgt = lab[:, 1:]
            ok = ((pred == tgt) | (tgt == -100)).all(1).float().mean().item()
        print(step, round(out.loss.item(), 4), "seq-acc", ok, round(time.time()-t0), flush=True)
