"""Latent-reasoning methods, all behind `LatentMethod` (base.py).

Adding a method = one module here, one entry in `registry.py`, its name in `options.MethodName` (plus an
options dataclass in options.py if it has knobs of its own) and a config in configs/.

This package's `__init__` imports nothing heavy: config.py imports the torch-free `methods.options`, and a
bad config must be reported before torch is imported. The classes are in `registry.METHODS` (plain imports);
`method_class` and `build_method` reach them, and `METHODS`, `LatentMethod`, `Generation` are loaded on first
access (`from latentreason.methods import METHODS` works as before).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from latentreason.errors import UserInputError

if TYPE_CHECKING:
    from latentreason.backbones import Backbone
    from latentreason.methods.base import Generation, LatentMethod
    from latentreason.methods.options import MethodConfig
    from latentreason.methods.registry import METHODS


def method_class(name: str) -> type[LatentMethod]:
    """The class registered under `name` (no model is built), e.g. to ask it a fact such as `label(config)`."""
    from latentreason.methods.registry import METHODS

    if name not in METHODS:
        raise UserInputError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]


def build_method(config: MethodConfig, backbone: Backbone) -> LatentMethod:
    return method_class(config.name)(backbone, config)


_LAZY = {"METHODS": "latentreason.methods.registry", "LatentMethod": "latentreason.methods.base",
         "Generation": "latentreason.methods.base"}
"""Names imported on first access (they pull in torch)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "Generation", "LatentMethod", "build_method", "method_class"]
