"""For comparison: the answer loss at initialisation under the read-out the neutral start replaced (issue 13),
rebuilt here by hand from the method's passes 1 and 2: the Base's full question cache, then the latents as
embeddings (liu: the last latent predicts the first answer token) or their K/V followed by `<eot>` (h1).

    nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=results/coprocessor_latent_scale python results/coprocessor_latent_scale/old_readout.py
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from measure import EVAL_EXAMPLES, HERE, settings_config  # noqa: I001  (the script's folder is on sys.path)

from latentreason.backbones import lm_forward
from latentreason.methods.coprocessor import append_kv
from latentreason.tokenization import positions_from_mask
from latentreason.training import build_run


@torch.no_grad()
def old_loss(method, examples) -> float:
    method.eval()
    batch = method.collate(examples)
    qmask = batch["question_mask"]
    cache = method.question_cache(batch["question_ids"], qmask)
    z, copro = method.latents(cache, qmask)
    n, rows = method.n_latents, qmask.shape[0]
    if method.injection == "embeddings":
        lead, lead_mask = z, torch.cat([qmask, qmask.new_ones(rows, n)], 1)
    else:
        append_kv(cache, copro, start=qmask.shape[1])
        eot = torch.full((rows, 1), method.ids["<eot>"], dtype=torch.long)
        lead, lead_mask = method.embed(eot), torch.cat([qmask, qmask.new_ones(rows, n + 1)], 1)
    embeds = torch.cat([lead, method.embed(batch["answer_ids"])], 1)
    mask = torch.cat([lead_mask, batch["answer_mask"]], 1)
    positions = positions_from_mask(mask)[:, -embeds.shape[1]:]
    logits = lm_forward(method.model, embeds, mask, positions, cache).logits
    first = lead.shape[1] - 1
    logits = logits[:, first: first + batch["answer_ids"].shape[1]]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["answer_labels"].reshape(-1), ignore_index=-100))


def main() -> None:
    out = {}
    for name in ("liu_none", "liu_rms", "h1"):
        cfg, _ = settings_config(name, 0)
        run = build_run(cfg)
        out[name] = old_loss(run.method, run.eval_set[:EVAL_EXAMPLES])
        print(name, out[name], flush=True)
    (HERE / "old_readout_init.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
