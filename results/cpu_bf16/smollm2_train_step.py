"""One SmolLM2-135M training step on CPU, fp32 against bf16 autocast (session 25): does bf16 bring the GSM8K
CPU arm of issue 13 within reach? Batch 8 x 192 random tokens, AdamW, one thread; two steps per setting, the
settings alternated twice (the first fp32 steps include warm-up). Prints seconds per step."""
import time, torch
from latentreason.backbones import smollm2_gguf_path
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
p = smollm2_gguf_path()
m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, torch_dtype=torch.float32)
m.train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
x = torch.randint(0, 49000, (8, 192))
def step(bf16):
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = m(input_ids=x, labels=x).loss
    loss.backward(); opt.step(); opt.zero_grad()
    return time.perf_counter() - t
for bf16 in (False, True, False, True):
    ts = [step(bf16) for _ in range(2)]
    print("bf16" if bf16 else "fp32", [round(t, 1) for t in ts], flush=True)
