"""`latentreason export RUN_DIR OUT_DIR`: a finished run as a Hugging Face directory.

    OUT_DIR/
      config.json, model.safetensors, generation_config.json   the backbone (save_pretrained): plain
                                                             AutoModelForCausalLM.from_pretrained(OUT_DIR)
      tokenizer.json, tokenizer_config.json, ...              the run's tokenizer, latent special tokens included
      coprocessor/                                            every other HF model the method owns, same format
      latent_method.safetensors                               the method's own parameters (soft tokens, exit gate, ...)
      latentreason_export.json                                what is where (read by load_exported)
      config.yaml, eval.json, environment.jsonl               the run's config, evaluation and what it ran on, copied
      README.md                                               model card: method, config, eval numbers

`load_exported(OUT_DIR)` rebuilds the method from `AutoModelForCausalLM.from_pretrained` plus the method
class, with every weight loaded strictly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from latentreason.config import RunConfig, from_dict, read_yaml
from latentreason.environment import ENVIRONMENT_FILE
from latentreason.errors import UserInputError

METHOD_WEIGHTS = "latent_method.safetensors"
MANIFEST = "latentreason_export.json"
FORMAT_VERSION = 1

def hf_models(method) -> dict[str, Any]:
    """The Hugging Face models a method owns, by attribute name (`model` is the backbone / Base)."""
    from transformers import PreTrainedModel

    return {name: child for name, child in method.named_children() if isinstance(child, PreTrainedModel)}


def export_run(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write finished run `run_dir` to `out_dir` as a Hugging Face directory (see the module docstring)."""
    from safetensors.torch import save_file

    from latentreason.finished_run import load_finished_run

    run_dir, out = Path(run_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserInputError("export directory exists and is not empty; choose another or pass --force", path=str(out))
    if out.resolve() == run_dir.resolve():
        raise UserInputError("export into the run directory itself; choose another OUT_DIR", path=str(out))
    run = load_finished_run(run_dir, device="cpu")
    method = run.method
    state = method.state_dict()
    if any(".lora_" in key for key in state):
        raise UserInputError("exporting a run with LoRA adapters (method.coprocessor.lora_rank > 0) is not supported yet", path=str(run_dir))
    models = hf_models(method)
    out.mkdir(parents=True, exist_ok=True)
    models["model"].save_pretrained(str(out))
    for name, model in models.items():
        if name != "model":
            model.save_pretrained(str(out / name))
    method.tokenizer.save_pretrained(str(out))
    rest = {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if k.split(".")[0] not in models}
    save_file(rest, str(out / METHOD_WEIGHTS), metadata={"method": method.name})
    manifest = {"format_version": FORMAT_VERSION, "method": method.name, "backbone": ".", "models": sorted(n for n in models if n != "model"),
                "method_weights": METHOD_WEIGHTS, "method_weight_names": sorted(rest), "exported_from": str(run_dir)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
    evaluation = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else None
    if evaluation is not None:
        shutil.copyfile(run_dir / "eval.json", out / "eval.json")
    if (run_dir / ENVIRONMENT_FILE).exists():  # runs made before it existed have none
        shutil.copyfile(run_dir / ENVIRONMENT_FILE, out / ENVIRONMENT_FILE)
    (out / "README.md").write_text(model_card(run.config, evaluation, run_dir, manifest, method.parameter_counts()))
    return out


def load_exported(path: str | Path, device: str | None = None):
    """The method of an exported directory: backbone (and any further model) via `from_pretrained`, the method
    class built on it from config.yaml, then every weight loaded strictly. Returns the method in eval mode."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from latentreason.backbones import TINY_BACKBONES, Backbone
    from latentreason.methods import method_class

    path = Path(path)
    if not (path / MANIFEST).exists():
        raise UserInputError(f"not a latentreason export (no {MANIFEST})", path=str(path))
    manifest = json.loads((path / MANIFEST).read_text())
    config: RunConfig = from_dict(RunConfig, read_yaml(path / "config.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    method = method_class(manifest["method"])(Backbone(model, tokenizer, from_scratch=config.model.backbone in TINY_BACKBONES), config.method)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    for name in manifest["models"]:
        part = AutoModelForCausalLM.from_pretrained(str(path / name), dtype=torch.float32)
        state |= {f"{name}.{k}": v for k, v in part.state_dict().items()}
    state |= load_file(str(path / manifest["method_weights"]))
    method.load_state_dict(state, strict=True)
    return method.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def flat_value(config: Any, key: str) -> Any:
    """The value of flat config key `key` ("method.coprocessor.variant") in nested dataclass `config`."""
    for part in key.split("."):
        config = getattr(config, part)
    return config


def identity_parts(config: RunConfig, keys: Sequence[str]) -> list[str]:
    """The identifying keys' values for a title: a plain value for a name ("h2"), `key=value` for a number
    ("first_stage=1"), or `section.key=value` for a key of an option section with an `enabled` switch
    (method.curriculum), left out while that section is off."""
    parts = []
    for key in keys:
        section_key, name = key.rsplit(".", 1)
        section = flat_value(config, section_key)
        if not hasattr(section, "enabled"):
            value = flat_value(config, key)
            parts.append(value if isinstance(value, str) else f"{name}={value}")
        elif section.enabled:
            parts.append(f"{section_key.split('.')[-1]}.{name}={flat_value(config, key)}")
    return parts


def model_card(config: RunConfig, evaluation: dict | None, run_dir: Path, manifest: dict, params: dict[str, int]) -> str:
    """README.md: what the method is, how to load it, its eval.json numbers and its full config."""
    from latentreason.methods import method_class

    method = config.method
    method_type = method_class(method.name)
    # The values of the keys that tell this method's configurations apart, e.g. "coprocessor (h2)".
    identity = ", ".join(identity_parts(config, method_type.identity_keys(method)))
    label = method.name + (f" ({identity})" if identity else "")
    budget = f", N_L = {method.n_latents}" if method.n_latents else ""
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [latentreason, latent-reasoning, {method.name}, {config.task.name}]",
        "---",
        "",
        f"# {run_dir.name}: {label} on {config.task.name}{budget}",
        "",
        f"Exported by `latentreason export` from the run directory `{run_dir}`; backbone "
        f"`{config.model.backbone}`" + (f" ({config.model.n_layer} layers, width {config.model.n_embd}, trained from scratch)" if config.model.backbone.endswith("-tiny") else "") + ".",
        "",
        "## Method",
        "",
        method_type.description or method.name,
        "",
        f"Parameters: {', '.join(f'{k} {v:,}' for k, v in params.items())}. Files: the backbone is this directory's "
        f"`model.safetensors`" + "".join(f", `{m}/` holds the {m}" for m in manifest["models"])
        + f"; `{METHOD_WEIGHTS}` holds {', '.join(f'`{n}`' for n in manifest['method_weight_names']) or 'nothing (the method adds no parameters)'}.",
        "",
        "## Loading",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)      # the backbone alone",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "",
        "from latentreason.export import load_exported",
        "method = load_exported(PATH)                             # the whole method: method.generate(...)",
        "```",
        "",
        "## Evaluation (`eval.json`)",
        "",
    ]
    if evaluation is None:
        lines.append("This run was not evaluated.")
    else:
        lines += ["| metric | value |", "|---|---|"]
        for key, value in evaluation.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            elif isinstance(value, list):
                value = "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) + "]"
            lines.append(f"| {key} | {value} |")
        lines += ["", f"`accuracy_ci95` is the 95% Wilson interval over the n = {evaluation.get('n')} evaluation examples."]
    lines += ["", "## Config (`config.yaml`)", "", "```yaml", (run_dir / "config.yaml").read_text().rstrip(), "```", ""]
    return "\n".join(lines)
