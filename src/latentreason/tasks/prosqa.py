"""ProsQA: logical reasoning over a DAG of made-up concepts (Hao et al. 2024, "Coconut").

A problem is a directed acyclic graph whose sources are people ("Tom is a wumpus.") and whose other
nodes are nonsense concepts ("Every wumpus is a lempus."). The question asks whether the root person
is a `target` (reachable) or a `neg_target` (not reachable); the steps spell out one path.

Records use the schema of the released files (``prosqa_valid.json``): ``question``, ``answer``,
``steps``, ``idx_to_symbol``, ``edges`` (``[parent, child]`` index pairs, parent index < child
index), ``root``, ``target``, ``neg_target``. Generated examples keep that whole record in
`Example.meta`, so `to_record` + `json.dump` writes a file `ProsQATask.load` reads back.

The generator guarantees what makes the label unambiguous: exactly one path from the root to the
target (so the step trace is the only proof), no path from the root to the negative target, and
both targets are leaves. The released split is looser (it often has several root-to-target paths);
its size statistics (nodes, edges, path length, number of people) are matched on average.

It is also built so that no cue short of following the graph from the asked person beats chance:
the graph is symmetric between two (person, leaf) pairs, each person reaching its own leaf by
exactly one path and never the other leaf, both chains drawn from the same length distribution,
and a coin picks which person the question asks about (see `_make_graph`). In-degree, mention
counts, depth, ancestors, fact and option order therefore have the same distribution for the
target and the negative target; `latentreason data audit` (tasks/audit.py) measures every such cue.
The released split has strong shortcuts of its own (the negative target sits at depth 1-4, the
target at 3-6: "the deeper option" answers 92% of it), so the negative chain's length is the one
released statistic not copied.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from latentreason.errors import UserInputError
from latentreason.tasks.base import ANSWER_MARKER, Example, Task, parse_json_list, read_text, register_task

FIELDS: dict[str, str] = {
    "question": "a string",
    "answer": "a string",
    "steps": "a list of strings",
    "idx_to_symbol": "a list of strings",
    "edges": "a list of [parent, child] index pairs",
    "root": "an integer node index",
    "target": "an integer node index",
    "neg_target": "an integer node index",
}
"""Fields of one record, in the released files' order, with what each must hold."""

PERSON_NAMES = (
    "Tom", "Gabriel", "Polly", "Alex", "Max", "Rex", "Stella", "Bob", "Oliver", "Fae", "Sally",
    "Jack", "Carol", "Davis", "Eva", "Sam", "Wren",
)
"""The people of the released data (roots of the graphs)."""

# Concept names are onset + vowel + coda + "pus", like the released "shumpus", "brimpus", "lorpus".
_ONSETS = ("", "b", "br", "ch", "d", "f", "g", "gr", "gw", "h", "j", "k", "l", "n", "qu", "r",
           "s", "sh", "scr", "st", "t", "v", "w", "y", "z", "zh")
_VOWELS = ("u", "e", "i", "o")
_CODAS = ("m", "r", "l")
EXTENDED_CONCEPT_NAMES: tuple[str, ...] = tuple(
    o + v + c + "pus" for o in _ONSETS for v in _VOWELS for c in _CODAS if o + v != "u"
)
"""A larger made-up inventory (~300 names) for `concepts="extended"`: each name then occurs in ~2% of
10-node problems, and a from-scratch model learns to even name one of the two options far more slowly."""

RELEASED_CONCEPT_NAMES: tuple[str, ...] = (
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus",
    "grimpus", "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus", "numpus",
    "quimpus", "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus", "terpus",
    "timpus", "tumpus", "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus", "zhorpus", "zumpus",
)
"""The 38 concept names of the released split (the default inventory, as in the data we imitate).
With them a tiny No-CoT model names one of the two options in 97% of answers after 800 steps, against
~70% with the extended inventory (docs/LOG.md, 2026-12-01)."""

CONCEPT_INVENTORIES: dict[str, tuple[str, ...]] = {
    "released": RELEASED_CONCEPT_NAMES, "extended": EXTENDED_CONCEPT_NAMES,
}
"""Generator parameter `concepts`: which inventory problems draw their concept names from."""

CONCEPT_NAMES: tuple[str, ...] = tuple(sorted(set(RELEASED_CONCEPT_NAMES) | set(EXTENDED_CONCEPT_NAMES)))
"""Every concept name any inventory can produce (what a task tokenizer must cover)."""

# Size distributions measured on the released validation split (300 problems): counts per value.
_PATH_LENGTHS = {3: 124, 4: 133, 5: 36, 6: 7}
_NODE_COUNTS = {17: 2, 18: 5, 19: 14, 20: 18, 21: 37, 22: 48, 23: 58, 24: 52, 25: 40, 26: 22,
                27: 3, 28: 1}
_PERSON_COUNTS = {2: 180, 3: 93, 4: 21, 5: 5, 6: 1}
_EDGES_PER_NODE = (1.59, 0.18)  # mean, standard deviation
_PERSON_EDGE_SKIP = 0.8
_EXTRA_RANKS = 2
"""Distractor concepts may sit up to this many levels below the target (released graphs reach
about two levels deeper than the answer path)."""


def _weighted(rng: random.Random, table: dict[int, int], lo: int | None = None,
              hi: int | None = None) -> int:
    """Sample a key of `table` proportionally to its count, restricted to lo..hi.

    When lo..hi reaches outside the table (sizes the released data never has), sample uniformly
    from lo..hi instead, so that every requested value can occur.
    """
    keys = [k for k in table if (lo is None or k >= lo) and (hi is None or k <= hi)]
    if lo is not None and hi is not None and len(keys) < hi - lo + 1:
        return rng.randint(lo, hi)
    return rng.choices(keys, weights=[table[k] for k in keys])[0]


def _reachable(adj: dict[int, list[int]], start: int) -> set[int]:
    seen = {start}
    stack = [start]
    while stack:
        for v in adj[stack.pop()]:
            if v not in seen:
                seen.add(v)
                stack.append(v)
    return seen


def fact_sentence(parent: str, child: str, parent_is_person: bool) -> str:
    return f"{parent} is a {child}." if parent_is_person else f"Every {parent} is a {child}."


def frontier_steps(facts: Sequence[tuple[str, int, int]], root: int, target: int) -> list[str]:
    """The search trace of `steps="frontier"`: step k holds, in question order, every fact whose parent is a
    child named in step k-1 (step 1: the asked person's facts), up to the first step that reaches the target.

    Each step is one filter over the fact list ("the facts about the nodes I just reached"), so no step needs
    to look ahead: the released path format has to pick, at every branching node, the child that will lead to
    an option, which is as hard as the No-CoT problem (a walk that picks uniformly among the children and takes
    an option when one is a child reaches the target in ~46% of 10-node depth 2-3 problems). The negative
    target is unreachable from the asked person, so it never appears; the target appears first in the step
    whose number is the path length (the path is the only route to it).
    """
    steps, reached = [], {root}
    while target not in reached:
        layer = [(sentence, child) for sentence, parent, child in facts if parent in reached]
        if not layer:
            raise AssertionError("frontier search ran out of facts before the target: the graph is broken")
        steps.append(" ".join(sentence for sentence, _ in layer))
        reached = {child for _, child in layer}
    return steps


def backward_steps(option_chains: Sequence[Sequence[str]]) -> list[str]:
    """The trace of `steps="backward"`: for each option in question order, the facts of its chain from the option
    back up to the person that heads it (one fact per step), so the answer is the option whose chain ends at
    the asked person.

    `option_chains[i]` is option i's head path, person first ([person, concept, ..., option]). Walking a chain
    backward needs almost no look-ahead on generated problems: a node of the answer path has 0.09 parents
    besides the path's own on average, where it has 1.9 children besides the path's (500 default-size
    problems; the released prosqa_valid.json: 0.48 and 1.85), and the path format must pick among those
    children at every step. The cost is a trace about twice the path's length (both options' chains).
    """
    steps = []
    for chain in option_chains:
        for depth in range(len(chain) - 1, 0, -1):
            steps.append(fact_sentence(chain[depth - 1], chain[depth], depth == 1))
    return steps


STEPS_FORMATS = ("path", "frontier", "backward")
"""Generator parameter `steps`: "path" is the released format (the answer path, one fact per step);
"frontier" is the breadth-first search trace of `frontier_steps`; "backward" walks each option's chain back to
its person (`backward_steps`)."""


def _make_graph(rng: random.Random, depths: tuple[int, int], n_nodes: int,
                concept_names: Sequence[str] = RELEASED_CONCEPT_NAMES, asked_facts_last: bool = False,
                steps_format: str = "path") -> dict[str, Any]:
    """Build one problem record. Node ids here are construction ids; renumbered at the end.

    The construction is symmetric between two (person, leaf) pairs: person 0 reaches leaf 0 by
    exactly one path and never leaf 1, person 1 likewise with leaf 1 and never leaf 0, and every
    other choice (chain lengths, distractors, extra people, densifying edges) treats the two pairs
    alike. Only at the end does a coin decide which person is asked about, so the target is
    whichever leaf belongs to that person. Any feature that ignores who is asked (in-degree,
    mention counts, depth, fact order, option order, ...) therefore has the same distribution for
    the target and the negative target, and every such shortcut sits at chance.
    """
    # People beyond the two needed ones must leave room for both chains.
    max_persons = max(2, n_nodes - sum(depths))
    n_persons = min(_weighted(rng, _PERSON_COUNTS), max_persons)
    n_concepts = n_nodes - n_persons

    # Construction ids: persons 0..n_persons-1 (0 and 1 head the two chains), then chain 0,
    # chain 1, then distractor concepts.
    rank: list[int] = [0] * n_persons
    chains: list[list[int]] = []
    for depth in depths:
        chains.append(list(range(len(rank), len(rank) + depth)))
        rank += list(range(1, depth + 1))
    n_extra = n_concepts - sum(depths)
    rank += [rng.randint(1, max(depths) + _EXTRA_RANKS) for _ in range(n_extra)]
    extras = list(range(len(rank) - n_extra, len(rank)))
    heads = (0, 1)
    leaves = (chains[0][-1], chains[1][-1])
    n = len(rank)

    adj: dict[int, list[int]] = {u: [] for u in range(n)}
    parents: dict[int, list[int]] = {u: [] for u in range(n)}
    edges: set[tuple[int, int]] = set()

    def add(u: int, v: int) -> None:
        adj[u].append(v)
        parents[v].append(u)
        edges.add((u, v))

    def allowed(u: int, v: int) -> bool:
        """Does u->v keep the DAG ranked, both leaves leaves, and for each (head, leaf) pair one
        head->own leaf path and no head->other leaf path?"""
        if rank[u] >= rank[v] or u in leaves or (u, v) in edges:
            return False
        below_v = None
        for head, own, other in ((0, leaves[0], leaves[1]), (1, leaves[1], leaves[0])):
            if u not in _reachable(adj, head):
                continue  # no new path starts at this head
            below_v = _reachable(adj, v) if below_v is None else below_v
            # Reaching the other leaf is forbidden; reaching any ancestor of the own leaf (the
            # leaf included) again would add a second path to it.
            if other in below_v or below_v & _reachable(parents, own):
                return False
        return True

    for head, chain in zip(heads, chains):
        for a, b in zip([head] + chain, chain):
            add(a, b)
    # Every distractor needs a parent (only people are sources); it has no children yet, so any
    # parent of lower rank that is not a leaf is allowed.
    for v in sorted(extras, key=lambda x: rank[x]):
        options = [u for u in range(n) if rank[u] < rank[v] and u not in leaves]
        add(rng.choice(options), v)
    # Extra people need at least one fact of their own.
    for p in range(2, n_persons):
        options = [v for v in range(n_persons, n) if allowed(p, v)]
        add(p, rng.choice(options))

    # Densify with random allowed edges up to the sampled edge count.
    want_edges = round(n * min(2.05, max(1.05, rng.gauss(*_EDGES_PER_NODE))))
    candidates = [(u, v) for u in range(n) for v in range(n_persons, n) if rank[u] < rank[v]]
    rng.shuffle(candidates)
    for u, v in candidates:
        if len(edges) >= want_edges:
            break
        # People have many candidate children (they sit above everything); thinning their edges
        # brings their mean out-degree nearer the released data's 2.8.
        if u < n_persons and rng.random() < _PERSON_EDGE_SKIP:
            continue
        if allowed(u, v):
            add(u, v)

    # The coin: which of the two people the question asks about.
    asked = rng.randrange(2)
    root, target, neg_target = heads[asked], leaves[asked], leaves[1 - asked]
    path = [root] + chains[asked]

    # Renumber in a random topological order with the two main people first, like the released
    # files (root is index 0 or 1 there and every edge goes from a lower to a higher index).
    order = list(heads)
    rng.shuffle(order)
    indeg = {u: len(parents[u]) for u in range(n)}
    ready = [u for u in range(2, n_persons)]
    for u in order:
        for v in adj[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    while ready:
        u = ready.pop(rng.randrange(len(ready)))
        order.append(u)
        for v in adj[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    assert len(order) == n, "construction produced a cycle"
    new_id = {old: i for i, old in enumerate(order)}

    people = rng.sample(PERSON_NAMES, n_persons)
    concepts = rng.sample(concept_names, n_concepts)
    name = {u: (people[u] if u < n_persons else concepts[u - n_persons]) for u in range(n)}
    idx_to_symbol = [name[u] for u in order]
    edge_list = sorted([new_id[u], new_id[v]] for u, v in edges)

    # (sentence, parent, child); sentences are unique, so sorting the triples sorts by sentence
    facts = sorted((fact_sentence(name[u], name[v], u < n_persons), u, v) for u, v in edges)
    rng.shuffle(facts)  # set order is arbitrary; sort, then shuffle with the seeded rng for determinism
    options = [name[target], name[neg_target]]
    rng.shuffle(options)
    person = name[root]
    if asked_facts_last:  # a stable partition: the same problem, only its facts reordered (no rng drawn)
        facts = [f for f in facts if f[1] != root] + [f for f in facts if f[1] == root]
    if steps_format == "frontier":
        steps = frontier_steps(facts, root, target)
    elif steps_format == "backward":
        head_path = {name[leaf]: [name[u] for u in [head] + chain] for head, chain, leaf in zip(heads, chains, leaves)}
        steps = backward_steps([head_path[option] for option in options])
    else:
        steps = [fact_sentence(name[a], name[b], a == root) for a, b in zip(path, path[1:])]
    return {
        "question": " ".join(sentence for sentence, _, _ in facts) + f" Is {person} a {options[0]} or {options[1]}?",
        "answer": f"{person} is a {name[target]}.",
        "steps": steps,
        "idx_to_symbol": idx_to_symbol,
        "edges": edge_list,
        "root": new_id[root],
        "target": new_id[target],
        "neg_target": new_id[neg_target],
    }


def to_record(example: Example) -> dict[str, Any]:
    """The example as a record of the released schema (field order as in the released files)."""
    record = {"question": example.question, "answer": example.answer, "steps": list(example.steps)}
    for key in ("idx_to_symbol", "edges", "root", "target", "neg_target"):
        if key not in example.meta:
            raise UserInputError(f"prosqa example lacks graph field {key!r}; expected an example "
                                 "from ProsQATask.generate or .load")
        record[key] = example.meta[key]
    return record


def write_records(examples: Iterable[Example], path: str) -> None:
    """Write examples as a JSON list in the released schema (readable by `ProsQATask.load`)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump([to_record(e) for e in examples], f, indent=1)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_record(rec: Any, index: int, path: str) -> None:
    """Raise UserInputError naming `path`, record `index` and the field when `rec` is malformed."""
    where = f"record {index}"
    if not isinstance(rec, dict):
        raise UserInputError(f"{where}: expected an object with fields {list(FIELDS)}", path=path)
    for key, expected in FIELDS.items():
        if key not in rec:
            raise UserInputError(f"{where}: missing field {key!r} (expected {expected})", path=path)
    n = len(rec["idx_to_symbol"]) if isinstance(rec["idx_to_symbol"], list) else 0
    checks = {
        "question": isinstance(rec["question"], str),
        "answer": isinstance(rec["answer"], str),
        "steps": isinstance(rec["steps"], list) and all(isinstance(s, str) for s in rec["steps"]),
        "idx_to_symbol": n > 0 and all(isinstance(s, str) for s in rec["idx_to_symbol"]),
        "edges": isinstance(rec["edges"], list) and all(
            isinstance(e, list) and len(e) == 2 and all(_is_int(x) and 0 <= x < n for x in e)
            for e in rec["edges"]),
        "root": _is_int(rec["root"]) and 0 <= rec["root"] < n,
        "target": _is_int(rec["target"]) and 0 <= rec["target"] < n,
        "neg_target": _is_int(rec["neg_target"]) and 0 <= rec["neg_target"] < n,
    }
    for key, ok in checks.items():
        if not ok:
            extra = "" if key in ("question", "answer", "steps") else f" within 0..{n - 1}"
            if key == "idx_to_symbol":
                extra = ", not empty"
            raise UserInputError(f"{where}: field {key!r} must be {FIELDS[key]}{extra}", path=path)


def normalize_answer(text: str) -> str:
    """Lowercase, single spaces, no surrounding whitespace or trailing period."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


@register_task
class ProsQATask(Task):
    """ProsQA: is the person a `target` or a `neg_target`? Answer "Tom is a <target>."."""

    name = "prosqa"
    training_only_params = ("asked_facts_last",)

    def generate(self, n: int, seed: int, **params: Any) -> list[Example]:
        """`n` problems (see `iter_generate`), as a list."""
        return list(self.iter_generate(n, seed, **params))

    def iter_generate(self, n: int, seed: int, *, min_depth: int = 3, max_depth: int = 6,
                      n_nodes: int | list[int] | None = None, concepts: str = "released",
                      asked_facts_last: bool = False, steps: str = "path", **params: Any) -> Iterator[Example]:
        """Yield `n` problems one at a time, deterministic in `seed` (a huge `n` never sits in memory).

        The answer path length (number of steps) is drawn from the released split's distribution
        restricted to min_depth..max_depth; the node count likewise unless `n_nodes` fixes it. `n_nodes` may
        also be a range `[lo, hi]`: each problem draws its size uniformly from it (raised where its two
        chains need more), so one stream mixes small graphs, which teach the lookup fast, with the target size.

        `asked_facts_last` moves the asked person's own facts to the end of the fact list, right before the
        question: a training crutch, never an evaluation setting, since "the last fact's concept" then answers
        one-hop problems. A short warm-up phase of it (`task.stream_curriculum`) gets a from-scratch model past
        the binding plateau: the copy path forms on the positional rule first, and the lookup by name follows
        (docs/LOG.md, 2026-12-02, results/prosqa_exploration/session5). The problems are otherwise identical.
        Concept names come from `concepts`: "released" (the released split's 38) or "extended" (~300).
        `steps` chooses the CoT steps: "path" (the released format: the answer path, one fact per step),
        "frontier" (a search trace without look-ahead, see `frontier_steps`) or "backward" (each option's chain
        walked back to its person, see `backward_steps`); the problem itself is the same.
        """
        if params:
            raise UserInputError(f"prosqa: unknown generator parameter(s) {sorted(params)}; "
                                 "expected min_depth, max_depth, n_nodes, concepts, asked_facts_last, steps")
        if steps not in STEPS_FORMATS:
            raise UserInputError(f"prosqa: steps must be one of {list(STEPS_FORMATS)}, got {steps!r}")
        if not isinstance(asked_facts_last, bool):
            raise UserInputError(f"prosqa: asked_facts_last must be true or false, got {asked_facts_last!r}")
        if concepts not in CONCEPT_INVENTORIES:
            raise UserInputError(f"prosqa: concepts must be one of {sorted(CONCEPT_INVENTORIES)}, got {concepts!r}")
        inventory = CONCEPT_INVENTORIES[concepts]
        if not isinstance(n, int) or n < 0:
            raise UserInputError(f"prosqa: n must be a non-negative integer, got {n!r}")
        if not (_is_int(min_depth) and _is_int(max_depth) and 1 <= min_depth <= max_depth):
            raise UserInputError(f"prosqa: expected integers 1 <= min_depth <= max_depth, got "
                                 f"min_depth={min_depth!r}, max_depth={max_depth!r}")
        need = 2 * max_depth + 2  # two people, each with its own chain of up to max_depth concepts
        size_range = None
        if isinstance(n_nodes, (list, tuple)):
            lo_need = 2 * min_depth + 2
            if not (len(n_nodes) == 2 and all(map(_is_int, n_nodes))
                    and lo_need <= n_nodes[0] <= n_nodes[1] <= len(inventory) and n_nodes[1] >= need):
                raise UserInputError(f"prosqa: n_nodes as a range must be [lo, hi] with {lo_need} <= lo <= hi <= "
                                     f"{len(inventory)} and hi >= {need} for min_depth={min_depth}, "
                                     f"max_depth={max_depth}; got {n_nodes!r}")
            size_range, n_nodes = (int(n_nodes[0]), int(n_nodes[1])), None
        elif n_nodes is not None and not (_is_int(n_nodes) and need <= n_nodes <= len(inventory)):
            raise UserInputError(f"prosqa: n_nodes must be an integer in {need}.."
                                 f"{len(inventory)} for max_depth={max_depth}, or a range [lo, hi]; got {n_nodes!r}")
        rng = random.Random(f"prosqa:{seed}")
        for _ in range(n):
            # Both chains draw their length from the same distribution: a negative chain that is
            # shorter on average (as in the released data) would make "the deeper option" a shortcut.
            depths = (_weighted(rng, _PATH_LENGTHS, min_depth, max_depth),
                      _weighted(rng, _PATH_LENGTHS, min_depth, max_depth))
            if size_range is not None:
                size = max(rng.randint(*size_range), sum(depths) + 2)
            else:
                size = n_nodes if n_nodes is not None else max(
                    _weighted(rng, _NODE_COUNTS), sum(depths) + 2 + rng.randint(0, 6))
            record = _make_graph(rng, depths, size, inventory, asked_facts_last, steps)
            yield Example(record["question"], list(record["steps"]), record["answer"], record)

    def to_record(self, example: Example) -> dict[str, Any]:
        """The example as a record of the released schema (see the module-level `to_record`)."""
        return to_record(example)

    def load(self, path: str) -> list[Example]:
        """Read a JSON list of records in the released schema, validating every record."""
        records = parse_json_list(read_text(path, "ProsQA"), path, "ProsQA")
        examples = []
        for i, rec in enumerate(records):
            validate_record(rec, i, path)
            examples.append(Example(rec["question"], list(rec["steps"]), rec["answer"], dict(rec)))
        return examples

    def score(self, generated: str, example: Example) -> bool:
        """Compare the text after the answer marker with the gold answer, normalised."""
        if not isinstance(generated, str):
            return False
        return normalize_answer(self.extract_answer(generated)) == normalize_answer(example.answer)

    def diagnostics(self, generated: str, example: Example) -> dict[str, bool]:
        """`well_formed`: the answer reads "<one word> is a <one word>"; `names_option`: its concept is
        one of the two options of the question (a model that always does so and guesses scores 0.5)."""
        if not isinstance(generated, str) or ANSWER_MARKER.strip() not in generated:
            return {"well_formed": False, "names_option": False}
        match = re.fullmatch(r"(\S+) is an? (\S+)", normalize_answer(self.extract_answer(generated)))
        meta = example.meta
        try:
            options = {meta["idx_to_symbol"][meta["target"]].lower(), meta["idx_to_symbol"][meta["neg_target"]].lower()}
        except (KeyError, IndexError, TypeError):
            options = set()
        return {"well_formed": match is not None, "names_option": match is not None and match.group(2) in options}


def graph_stats(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean size statistics of records (nodes, edges, path length, people); used to compare the
    generator with released data."""
    def mean(xs: list[int]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    def n_sources(r: dict[str, Any]) -> int:
        children = {b for _, b in r["edges"]}
        return sum(1 for i in range(len(r["idx_to_symbol"])) if i not in children)

    return {
        "nodes": mean([len(r["idx_to_symbol"]) for r in records]),
        "edges": mean([len(r["edges"]) for r in records]),
        "path_length": mean([len(r["steps"]) for r in records]),
        "people": mean([n_sources(r) for r in records]),
    }
