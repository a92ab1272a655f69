"""SmolLM2-135M-Instruct (pretrained, offline GGUF) zero-shot on binding problems and 10-node ProsQA: the two options
compared by next-token log-probability after "### P is a", 40 problems each; then the time of one batch-8 training
step on one thread. Arg: decoder layers kept (30 = all)."""
import time, random, torch, sys
sys.path.insert(0, "../../../src")  # run from this folder
from latentreason.backbones import smollm2_gguf_path
from transformers import AutoTokenizer, AutoModelForCausalLM
from latentreason.tasks.prosqa import PERSON_NAMES, RELEASED_CONCEPT_NAMES
from latentreason.tasks import get_task
torch.set_num_threads(1)
g = smollm2_gguf_path()
tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32).eval()
KEEP = int(sys.argv[1]) if len(sys.argv) > 1 else 30
model.model.layers = model.model.layers[:KEEP]; model.config.num_hidden_layers = KEEP
r = random.Random(0)
def lookup(k):
    people, concepts = r.sample(PERSON_NAMES, k), r.sample(RELEASED_CONCEPT_NAMES, k)
    facts = [f"{p} is a {c}." for p, c in zip(people, concepts)]; r.shuffle(facts)
    i = r.randrange(k); j = r.choice([m for m in range(k) if m != i])
    opts = [concepts[i], concepts[j]]; r.shuffle(opts)
    return " ".join(facts) + f" Is {people[i]} a {opts[0]} or {opts[1]}?", people[i], concepts[i], concepts[j]
def score(q, p, right, wrong):
    ids = tok(q + "\n### " + p + " is a", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lp = model(ids).logits[0, -1].log_softmax(-1)
    a, b = tok(" " + right)["input_ids"][0], tok(" " + wrong)["input_ids"][0]
    return float(lp[a] > lp[b])
t = time.time()
for k in (2, 6):
    print("lookup", k, sum(score(*lookup(k)) for _ in range(40)) / 40, flush=True)
task = get_task("prosqa")
hop = list(task.iter_generate(40, seed=5, n_nodes=10, min_depth=1, max_depth=1))
print("10-node one-hop", sum(score(e.question, e.answer.split()[0], e.meta["idx_to_symbol"][e.meta["target"]], e.meta["idx_to_symbol"][e.meta["neg_target"]]) for e in hop) / 40)
d23 = list(task.iter_generate(40, seed=5, n_nodes=10, min_depth=2, max_depth=3))
print("10-node depth 2-3", sum(score(e.question, e.answer.split()[0], e.meta["idx_to_symbol"][e.meta["target"]], e.meta["idx_to_symbol"][e.meta["neg_target"]]) for e in d23) / 40)
print("eval s", time.time() - t)
# training step cost
model.train()
ids = tok([e.question + "\n### " + e.answer for e in d23[:8]], return_tensors="pt", padding=True)["input_ids"]
t = time.time(); out = model(ids, labels=ids); out.loss.backward(); print("fwd+bwd batch 8 x", ids.shape[1], "tokens:", time.time() - t, "s")
