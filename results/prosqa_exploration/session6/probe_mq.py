"""Multi-query probe (session 6), with layer growth (session 14, `GROW`).

GROW (session 14, default off): a layout such as "onno" for a run started from INIT: "o" takes the next layer of the INIT model
in order, "n" is a new layer whose two output projections (attention o_proj, MLP down_proj) are zero, so the grown
model computes exactly what the INIT model did (checked at start) and the new layers start as identity blocks
the gradient can still reach. The idea: a 2-layer model that looks one fact up (the 10-node one-hop model) keeps
its lookup and gains room to chain a second and third lookup. LR_DECAY (0): if > 0, the lr falls linearly to 0 over
the last LR_DECAY steps. SAVE (""): a path for the final state dict.

Multi-query probe: many questions about one graph per forward pass, each seeing only the facts.

A plain LlamaForCausalLM loop (no project training code) on fresh 10-node ProsQA. With MQ=1 every training
sequence is the facts followed by several query blocks ("Is P a X or Y?\n### P is a X.<eos>"), one per
(person, depth) of the problem's two symmetric chains: the asked person and the other main person, each asked
about the depth-d node of its own chain against the depth-d node of the other chain, for every depth both
chains have, plus the two leaves (the standard question is one of them). A block-diagonal 4D attention mask
lets each block attend to the facts and to itself only, and every block's positions restart right after the
facts, so each block is exactly the single-question example it stands for: up to 6 answers supervised for
about 1.8x the tokens of one. MQ=0 trains on the standard single question.

Env: D (256), H (16), HD (32), NL (4), LR (1e-3), BS (32 graphs), STEPS (4000), NODES ("10"), DEPTH ("2-3"),
SEED (0), INIT (a framework run dir: start from its final weights and tokenizer; D, H, HD, NL are then ignored), MQ (1), LEAF_ONLY (0: 1 keeps only the two leaf queries), COT (0: 1 = every answer is preceded by the
CoT steps from the person to the answer, one sentence per line, as the project's CoT layout), PEOPLE (0; "lo-hi"
draws each problem's count) and PEOPLE_STEPS (0): the first PEOPLE_STEPS steps train on binding problems instead
(PEOPLE people with one fact each, every person queried; class Lookup); "look" is the held-out accuracy at the
largest count. REPEAT (0): for the first REPEAT steps every training row also carries the facts
repeated (" Again: " + facts, its own block after the facts, every token supervised): dense practice of the
in-context copy (induction) that a lookup by name needs.
Prints every EVERY (100) steps: step, train loss, standard held-out seq-acc (teacher-forced argmax = whole answer, 300
problems in the standard single-question format), held-out answer-word accuracy per query depth (1, 2, leaf),
seconds.
"""
import os, random, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from latentreason.config import load_config
from latentreason.training import build_run
from latentreason.tasks import get_task

E = os.environ.get
D, H = int(E("D", "256")), int(E("H", "16")); HD = int(E("HD", "32")); NL = int(E("NL", "4"))
LR, BS, STEPS, SEED = float(E("LR", "1e-3")), int(E("BS", "32")), int(E("STEPS", "4000")), int(E("SEED", "0"))
NODES = int(E("NODES", "10"))
dlo, _, dhi = E("DEPTH", "2-3").partition("-"); dlo, dhi = int(dlo), int(dhi or dlo)
MQ, LEAF_ONLY, COT = E("MQ", "1") == "1", E("LEAF_ONLY", "0") == "1", E("COT", "0") == "1"
torch.manual_seed(SEED); torch.set_num_threads(1)
cfg = load_config(None, ["task.name=prosqa", "task.eval_size=10", "task.train_size=64", "task.params.n_nodes=10",
                         "task.params.min_depth=1", "task.params.max_depth=1", "model.backbone=llama-tiny", "method.name=no_cot"])
INIT = E("INIT", "")
if INIT:  # continue from a framework run's final weights (its own tokenizer and model shape)
    run0 = build_run(load_config(os.path.join(INIT, "config.yaml"), [f"train.init_from={INIT}", "out_dir=/tmp/probe_init"]), None)
    tok, model = run0.method.tokenizer, run0.method.model
    GROW = E("GROW", "")
    if GROW:
        assert GROW.count("o") == model.config.num_hidden_layers, f"GROW {GROW!r} must use each of the INIT model's {model.config.num_hidden_layers} layers once"
        grown_cfg = LlamaConfig(**{**model.config.to_dict(), "num_hidden_layers": len(GROW)})
        grown = LlamaForCausalLM(grown_cfg)
        grown.model.embed_tokens.load_state_dict(model.model.embed_tokens.state_dict())
        grown.model.norm.load_state_dict(model.model.norm.state_dict())
        grown.lm_head.load_state_dict(model.lm_head.state_dict())
        old_layers = iter(model.model.layers)
        with torch.no_grad():
            for layer, kind in zip(grown.model.layers, GROW):
                if kind == "o":
                    layer.load_state_dict(next(old_layers).state_dict())
                else:
                    layer.self_attn.o_proj.weight.zero_()
                    layer.mlp.down_proj.weight.zero_()
        grown_check = torch.randint(3, len(tok), (2, 40))
        with torch.no_grad():
            assert torch.allclose(model(grown_check).logits, grown(grown_check).logits, atol=1e-4), "growth changed the function"
        model = grown
else:
    tok = build_run(cfg, None).method.tokenizer
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=4 * D, num_hidden_layers=NL,
        num_attention_heads=H, num_key_value_heads=H, head_dim=HD, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=1, pad_token_id=0, attn_implementation=E("ATTN", "sdpa")))
opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.95))
LR_DECAY, EVERY = int(E("LR_DECAY", "0")), int(E("EVERY", "100"))
task = get_task("prosqa"); rng = random.Random(SEED)
train_gen = task.iter_generate(10**9, seed=SEED * 1000 + NODES, n_nodes=NODES, min_depth=dlo, max_depth=dhi)
held = task.iter_generate(10**9, seed=999, n_nodes=NODES, min_depth=dlo, max_depth=dhi)


def chain(meta, head, leaf):
    """The unique path head -> leaf (node ids) in the problem's DAG."""
    adj = {}
    for u, v in meta["edges"]:
        adj.setdefault(u, []).append(v)
    def walk(u):
        if u == leaf:
            return [u]
        for v in adj.get(u, []):
            rest = walk(v)
            if rest:
                return [u] + rest
        return None
    return walk(head)


def queries(e):
    """(kind, person, right, wrong, steps) for every query of the problem; kind is 1, 2 (depth) or 'leaf'; steps
    are the CoT sentences from the person to `right`."""
    m, sym = e.meta, e.meta["idx_to_symbol"]
    root, other = m["root"], 1 - m["root"]  # the two main people are ids 0 and 1 (see prosqa._make_graph)
    mine, theirs = chain(m, root, m["target"]), chain(m, other, m["neg_target"])
    def steps(path):
        return [f"{sym[a]} is a {sym[b]}." if i == 0 else f"Every {sym[a]} is a {sym[b]}." for i, (a, b) in enumerate(zip(path, path[1:]))]
    out = [("leaf", sym[root], sym[m["target"]], sym[m["neg_target"]], steps(mine)),
           ("leaf", sym[other], sym[m["neg_target"]], sym[m["target"]], steps(theirs))]
    if not LEAF_ONLY:
        for d in range(1, min(len(mine), len(theirs)) - 1):  # inner depths both chains have
            out += [(d, sym[root], sym[mine[d]], sym[theirs[d]], steps(mine[:d + 1])),
                    (d, sym[other], sym[theirs[d]], sym[mine[d]], steps(theirs[:d + 1]))]
    return out


def block(person, right, wrong, steps):
    x, y = (right, wrong) if rng.random() < 0.5 else (wrong, right)
    q = tok(f" Is {person} a {x} or {y}?\n", add_special_tokens=False)["input_ids"]
    cot = [t for s in steps for t in tok(s + "\n", add_special_tokens=False)["input_ids"]] if COT else []
    a = cot + tok(f"### {person} is a {right}.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return q, a, len(cot)


plo, _, phi = E("PEOPLE", "0").partition("-"); plo = int(plo); phi = int(phi or plo); PEOPLE = phi
PEOPLE_STEPS = int(E("PEOPLE_STEPS", "0"))
REPEAT = int(E("REPEAT", "0"))  # steps with the repeated-facts block (0: never)
from latentreason.tasks.prosqa import PERSON_NAMES, RELEASED_CONCEPT_NAMES


class Lookup:
    """A binding problem: PEOPLE people, one fact each ("P is a C."), shuffled; queries ask every person
    about its own concept against another person's, so only a lookup by name answers them."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def __next__(self):
        r = self.rng; k = r.randint(plo, phi)
        people, concepts = r.sample(PERSON_NAMES, k), r.sample(RELEASED_CONCEPT_NAMES, k)
        facts = [f"{p} is a {c}." for p, c in zip(people, concepts)]; r.shuffle(facts)
        qs = []
        for i, p in enumerate(people):
            j = r.choice([m for m in range(k) if m != i])
            qs.append(("look", p, concepts[i], concepts[j], [f"{p} is a {concepts[i]}."]))
        return type("Lookup", (), {"question": " ".join(facts) + " Is ", "qs": qs})()


def facts_of(e):
    return e.question.rsplit(" Is ", 1)[0]


def pack(exs, multi, repeat=False):
    """Token ids, labels, 4D additive mask and positions for a batch; kinds[i] lists (kind, label index) of row i."""
    rows = []
    for e in exs:
        f = tok(facts_of(e))["input_ids"]
        qs = e.qs if hasattr(e, "qs") else queries(e) if multi else [("leaf", *queries(e)[0][1:])]
        ids, lab, pos, owner, kinds = list(f), [-100] * len(f), list(range(len(f))), [0] * len(f), []
        if repeat:  # the facts again, every token supervised: dense in-context copying (induction) practice
            r = tok(" Again: " + facts_of(e), add_special_tokens=False)["input_ids"]
            ids += r; lab += r; pos += list(range(len(f), len(f) + len(r))); owner += [-1] * len(r)
        for b, (kind, p, r, w, st) in enumerate(qs, start=1):
            q, a, n_cot = block(p, r, w, st)
            kinds.append((kind, len(ids) + len(q) + n_cot + 4))  # the answer concept: "### P is a X" -> answer token 4
            ids += q + a; lab += [-100] * len(q) + a; pos += list(range(len(f), len(f) + len(q) + len(a)))
            owner += [b] * (len(q) + len(a))
        rows.append((ids, lab, pos, owner, kinds))
    L = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long); lab = torch.full((len(rows), L), -100)
    pos = torch.zeros(len(rows), L, dtype=torch.long); mask = torch.full((len(rows), 1, L, L), torch.finfo(torch.float32).min)
    for i, (a, b, c, o, _) in enumerate(rows):
        n = len(a); ids[i, :n] = torch.tensor(a); lab[i, :n] = torch.tensor(b); pos[i, :n] = torch.tensor(c)
        o = torch.tensor(o)
        allowed = ((o[None, :] == 0) | (o[None, :] == o[:, None])) & torch.ones(n, n, dtype=torch.bool).tril()
        mask[i, 0, :n, :n] = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        mask[i, 0, n:, :] = 0.0  # padding rows attend anywhere (their labels are ignored), avoids NaN rows
    return ids, lab, pos, mask, [r[4] for r in rows]


def run(batch):
    ids, lab, pos, mask, _ = batch
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


# Check once that packing is exact: the first block of a packed row gives the logits of the plain sequence.
ex = next(held)
plain = tok(ex.question + "\n")["input_ids"]
assert tok(facts_of(ex))["input_ids"] + tok(" Is" + ex.question.rsplit(" Is", 1)[1] + "\n", add_special_tokens=False)["input_ids"] == plain
std_exs = [next(held) for _ in range(300)]
std = pack(std_exs, False)
mq_held = pack(std_exs[:150], True)
look_gen, look_held = Lookup(SEED), Lookup(12345)
plo_train = plo; plo = phi  # the held-out lookups use the largest size
held_look = [next(look_held) for _ in range(100)]
plo = plo_train
if PEOPLE:
    mq_held = (mq_held, pack(held_look, True))
print((f"GROW={E('GROW')} INIT={INIT} " if E("GROW") else "") + f"D={D} H={H} HD={HD} NL={NL} LR={LR} BS={BS} NODES={NODES} DEPTH={dlo}-{dhi} SEED={SEED} MQ={int(MQ)} "
      f"LEAF_ONLY={int(LEAF_ONLY)} params={sum(p.numel() for p in model.parameters())/1e6:.2f}M", flush=True)
def evaluate(step, loss):
    with torch.no_grad():
        lg = run(std); pred = lg[:, :-1].argmax(-1); tgt = std[1][:, 1:]
        ok = ((pred == tgt) | (tgt == -100)).all(1).float().mean().item()
        per = {}
        for held_batch in (mq_held if PEOPLE else (mq_held,)):
            pred = run(held_batch).argmax(-1)
            for i, kinds in enumerate(held_batch[4]):
                for kind, j in kinds:
                    per.setdefault(kind, []).append(float(pred[i, j - 1] == held_batch[0][i, j]))
    acc = " ".join(f"{k}:{sum(v)/len(v):.2f}" for k, v in sorted(per.items(), key=lambda kv: str(kv[0])))
    print(step, round(loss, 4), "std-acc", round(ok, 3), acc, round(time.time() - t0), flush=True)


t0 = time.time()
if INIT:
    evaluate(0, float("nan"))
for step in range(1, STEPS + 1):
    if LR_DECAY and step > STEPS - LR_DECAY:
        for group in opt.param_groups:
            group["lr"] = LR * (STEPS - step + 1) / LR_DECAY
    gen = look_gen if step <= PEOPLE_STEPS else train_gen
    logits = run(b := pack([next(gen) for _ in range(BS)], MQ, step <= REPEAT))
    lab = b[1]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), lab[:, 1:].reshape(-1))
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()
    if step % EVERY == 0:
        evaluate(step, loss.item())

if E("SAVE", ""):
    torch.save(model.state_dict(), E("SAVE"))
