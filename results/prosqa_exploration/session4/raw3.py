"""Does a tiny llama learn in-context recall (many queries per sequence) and how fast? Then ProsQA n4."""
import sys, time, torch, random, os
from latentreason.config import load_config
from latentreason.training import build_run
from latentreason.tasks import get_task
from latentreason.tasks.prosqa import PERSON_NAMES, RELEASED_CONCEPT_NAMES
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0); torch.set_num_threads(1)
LR=float(sys.argv[1]); WARM=int(sys.argv[2]); TOTAL=int(sys.argv[3]); NL=int(sys.argv[4])
cfg = load_config(None, ["task.name=prosqa","task.eval_size=300","task.train_size=64","task.params.n_nodes=4","task.params.min_depth=1","task.params.max_depth=1","model.backbone=llama-tiny","method.name=no_cot"])
run = build_run(cfg, None); tok = run.method.tokenizer
model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=NL, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=0))
opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9,0.95))
rng = random.Random(0)
A_ID = tok(" a")["input_ids"][0]
def recall():
    k = rng.randint(2, 8); people = rng.sample(PERSON_NAMES, k); cs = [rng.choice(RELEASED_CONCEPT_NAMES) for _ in range(k)]
    q = " ".join(f"{p} is a {c}." for p, c in zip(people, cs)); order = list(range(k)); rng.shuffle(order)
    return q, " ".join(f"{people[i]} is a {cs[i]}." for i in order)
task = get_task("prosqa"); gen = task.iter_generate(10**9, seed=5, n_nodes=4, min_depth=1, max_depth=1)
evalx = [(e.question, e.answer) for e in task.iter_generate(200, seed=99, n_nodes=4, min_depth=1, max_depth=1)]
rs = random.Random(7); 
def pack(pairs):
    seqs, labs = [], []
    for q, a in pairs:
        qi = tok(q)["input_ids"]; ai = tok(" ### " + a)["input_ids"] + [1]
        seqs.append(qi + ai); labs.append([-100]*len(qi) + ai)
    L = max(map(len, seqs))
    ids = torch.tensor([s + [0]*(L-len(s)) for s in seqs]); lab = torch.tensor([l + [-100]*(L-len(l)) for l in labs])
    mask = (torch.arange(L)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    return ids, lab, mask
state = rng.getstate(); evalr = [recall() for _ in range(200)]
t0 = time.time()
for step in range(1, TOTAL + 1):
    pairs = [recall() for _ in range(32)] if step <= WARM else [(e.question, e.answer) for e in (next(gen) for _ in range(32))]
    ids, lab, mask = pack(pairs)
    out = model(input_ids=ids, attention_mask=mask, labels=lab)
    out.loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()
    if step % 200 == 0:
        with torch.no_grad():
            ids, lab, mask = pack(evalr); logits = model(input_ids=ids, attention_mask=mask).logits
            pred = logits[:, :-1].argmax(-1); tgt = lab[:, 1:]
            concept = (ids[:, :-1] == A_ID) & (tgt != -100)  # the token after " a" in the answer = a lookup
            racc = ((pred == tgt) & concept).sum().item() / concept.sum().item()
            ids, lab, mask = pack(evalx); logits = model(input_ids=ids, attention_mask=mask).logits
            pred = logits[:, :-1].argmax(-1); tgt = lab[:, 1:]
            pacc = ((pred == tgt) | (tgt == -100)).all(1).float().mean().item()
        print(step, "warm" if step <= WARM else "task", round(out.loss.item(), 4), "recall-lookup-acc", round(racc, 3), "prosqa-n4", pacc, round(time.time()-t0), flush=True)
