"""Method registry: adding a method = one module + one entry here + a config."""

from __future__ import annotations

import importlib

from latentreason.backbones import Backbone
from latentreason.config import MethodConfig
from latentreason.errors import UserInputError
from latentreason.methods.base import Generation, LatentMethod

METHODS: dict[str, str] = {
    "no_cot": "latentreason.methods.cot:NoCoT",
    "cot": "latentreason.methods.cot:CoT",
    "soft_tokens": "latentreason.methods.soft_tokens:SoftTokens",
    "coconut": "latentreason.methods.coconut:Coconut",
    "coprocessor": "latentreason.methods.coprocessor:Coprocessor",
    "looped": "latentreason.methods.looped:Looped",
}
"""name -> "module:Class" (imported lazily so one broken method cannot break the others)."""


def method_class(name: str) -> type[LatentMethod]:
    if name not in METHODS:
        raise UserInputError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_method(config: MethodConfig, backbone: Backbone) -> LatentMethod:
    return method_class(config.name)(backbone, config)


__all__ = ["METHODS", "Generation", "LatentMethod", "build_method", "method_class"]
