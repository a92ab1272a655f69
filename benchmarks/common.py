"""Shared benchmark plumbing: flags, model/data setup, interleaved timing, peak memory, MFU, tables.

Every benchmark measures its method AND its baseline in the same process, interleaved repeat by repeat
(A, B, A, B, ...), and reports medians: on a shared machine, load changes affect both sides alike, so the
ratio is far more stable than either time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never download anything
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from latentreason.backbone_names import TINY_BACKBONE_NAMES  # noqa: E402
from latentreason.backbones import Backbone, build_backbone  # noqa: E402
from latentreason.batching import to_device  # noqa: E402,F401  (common.to_device: the benchmarks' name for it)
from latentreason.config import MethodConfig, ModelConfig  # noqa: E402
from latentreason.methods import LatentMethod, build_method  # noqa: E402
from latentreason.tables import markdown_table  # noqa: E402
from latentreason.tasks import get_task  # noqa: E402
from latentreason.tokenization import EncodedExample, encode_examples, example_texts  # noqa: E402

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4},
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12},  # GPT-2 small's body (offline 1k-token vocabulary)
}
"""--size presets for the random-init backbones (gpt2-tiny, qwen3-tiny, llama-tiny)."""


def model_label(args: argparse.Namespace) -> str:
    """What a report's title says the model was: `size=tiny` for a random-init backbone (sized by --size), the
    backbone's name for a pretrained one, whose size --size does not change."""
    return f"size={args.size}" if args.backbone in TINY_BACKBONE_NAMES else f"backbone={args.backbone}"

BF16_PEAK_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
]
"""Dense (no sparsity) bf16 tensor-core peaks by device-name substring; the first match wins."""


# ----------------------------------------------------------------------------- flags and setup


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes; scripts add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--backbone", default="gpt2-tiny", help="gpt2-tiny, qwen3-tiny or llama-tiny (sized by --size)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per side first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="regional torch.compile of the decoder layers (training.compile_layers)")
    p.add_argument("--out", default=None, help="write the results as JSON here (and the table as .md next to it)")
    return p


@dataclass
class Env:
    """Resolved device, autocast dtype and a description for the report."""

    device: torch.device
    dtype: str
    """fp32 or bf16 (bf16 = torch.autocast, weights stay fp32, as in the training loop)."""

    def autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or platform.machine()
        return {"device": str(self.device), "device_name": name, "dtype": self.dtype, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}


def setup(args: argparse.Namespace) -> Env:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        print("warning: --device cuda but no GPU is visible; running on cpu", file=sys.stderr)
        device = torch.device("cpu")
    else:
        device = torch.device(args.device)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Env(device, dtype)


def countdown_data(n: int, branching: int = 4, seed: int = 0) -> list:
    """Countdown examples (branching 4 gives exactly 3 reasoning steps each)."""
    return get_task("countdown").generate(n, seed, branching=branching)


def build(args: argparse.Namespace, env: Env, method: MethodConfig, examples: Sequence, backbone: Backbone | None = None) -> tuple[LatentMethod, list[EncodedExample], Backbone]:
    """A method on a freshly built (or given) backbone, moved to the device, plus the encoded examples.

    Passing the same `backbone` to two builds makes the two methods share one set of weights.
    """
    if backbone is None:
        torch.manual_seed(args.seed)
        cfg = ModelConfig(backbone=args.backbone, max_positions=1024, **SIZES[args.size])
        backbone = build_backbone(cfg, corpus=example_texts(examples))
    torch.manual_seed(args.seed)
    built = build_method(method, backbone).to(env.device)
    if args.compile:
        from latentreason.training import compile_layers

        compile_layers(built)  # compiled on first call: keep --warmup >= 2 so it is not timed
    return built, encode_examples(backbone.tokenizer, examples), backbone


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Time every function `repeats` times, alternating between them; median and spread per name.

    Warmup calls (compilation, allocator growth, lazy init) run first for every side and are not timed.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            began = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - began)
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "repeats": len(s), "samples_s": s}
        for name, s in samples.items()
    }


def ratios(times: dict[str, dict[str, float]], slow: str, fast: str) -> tuple[float, float]:
    """(median ratio, min ratio) of two timed sides. Under contention the min (least disturbed repeat)
    is often the steadier estimate; both are reported."""
    return times[slow]["median_s"] / times[fast]["median_s"], times[slow]["min_s"] / times[fast]["min_s"]


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def _rss_sampler(interval_s: float = 0.0005):
    """Peak resident set size while the block runs, sampled by a thread (torch ops release the GIL)."""
    peak = {"bytes": _rss_bytes()}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak["bytes"] = max(peak["bytes"], _rss_bytes())
            time.sleep(interval_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak["bytes"] = max(peak["bytes"], _rss_bytes())


def _release_cached_heap() -> None:
    """Make freed memory leave the RSS, so a call's allocations show up as RSS growth: glibc then serves
    allocations >= 64 KiB with mmap (unmapped on free; mallopt M_MMAP_THRESHOLD = -3), and malloc_trim
    returns the pages of chunks the heap kept from earlier calls (reusing them faults them in again)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory of one call of `fn` above what was allocated before it (call it after the timings).

    GPU: torch.cuda.max_memory_allocated (exact, tensors only). CPU: growth of the process RSS sampled
    every 0.5 ms after releasing the heap's cached pages (see _release_cached_heap); approximate
    (sampling, allocator slack, page granularity; glibc/Linux only).
    """
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - before) / 2**20, "how": "cuda.max_memory_allocated delta"}
    if not os.path.exists("/proc/self/statm"):
        return {"peak_mb": float("nan"), "how": "unavailable (no /proc)"}
    gc.collect()
    _release_cached_heap()
    before = _rss_bytes()
    with _rss_sampler() as peak:
        fn()
    return {"peak_mb": (peak["bytes"] - before) / 2**20, "how": "RSS growth (sampled)"}


# ----------------------------------------------------------------------------- FLOPs and MFU


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s from the table, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK_FLOPS:
        if key in name:
            return peak
    return None


def mfu(flops: float, seconds: float, device: torch.device) -> float | None:
    """Model FLOPs utilisation: analytic FLOPs per second over the device's bf16 peak (GPU only)."""
    peak = peak_flops(device)
    return None if peak is None or seconds <= 0 else flops / seconds / peak


# ----------------------------------------------------------------------------- reporting


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        if abs(value) >= 1e5 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of `rows` restricted to `columns` (missing cells print as n/a)."""
    return markdown_table(rows, columns, fmt=fmt)


def report(title: str, args: argparse.Namespace, env: Env, rows: Sequence[dict[str, Any]], columns: Sequence[str],
           summary: dict[str, Any]) -> None:
    """Print the table and the summary; with --out also write JSON (+ the table as Markdown next to it)."""
    text = table(rows, columns)
    summary_lines = [f"- {k}: {fmt(v)}" for k, v in summary.items()]
    print(f"\n## {title}\n")
    print(f"{env.describe()}\n")
    print(text)
    print("\n" + "\n".join(summary_lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"title": title, "argv": sys.argv, "args": vars(args), "env": env.describe(), "rows": list(rows), "summary": summary}
        out.write_text(json.dumps(payload, indent=2, default=str))
        out.with_suffix(".md").write_text(f"## {title}\n\n`{shlex.join(sys.argv)}`\n\n{env.describe()}\n\n{text}\n\n" + "\n".join(summary_lines) + "\n")


def train_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, env: Env) -> Callable[[], None]:
    """zero_grad, forward under autocast, backward, AdamW step."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with env.autocast():
            loss = loss_fn()
        loss.backward()
        optimizer.step()

    return step


def adamw(module: torch.nn.Module, env: Env) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    # A tiny lr: the weights barely move, so every repeat does the same work.
    return torch.optim.AdamW(params, lr=1e-7, fused=env.device.type == "cuda")


def profile_tables(fns: dict[str, Callable[[], Any]], env: Env, out: str | None, steps: int = 3, row_limit: int = 15) -> None:
    """torch.profiler table (operators by self time) of `steps` calls of each function: printed, and with
    `out` appended to its .md (how a missed target is explained)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    sort = "self_device_time_total" if env.device.type == "cuda" else "self_cpu_time_total"
    text = []
    for name, fn in fns.items():
        fn()  # warm
        sync(env.device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            sync(env.device)
        text.append(f"### profile: {name} ({steps} calls)\n\n```\n{prof.key_averages().table(sort_by=sort, row_limit=row_limit)}\n```\n")
    print("\n".join(text))
    if out:
        md = Path(out).with_suffix(".md")
        md.write_text(md.read_text() + "\n" + "\n".join(text))
