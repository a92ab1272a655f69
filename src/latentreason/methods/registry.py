"""Every method by its `method.name`: plain imports, so a reader (or an IDE) follows a config to its class.

Importing this module imports torch and transformers; torch-free code asks `methods.method_class` lazily.
"""

from __future__ import annotations

from latentreason.methods.base import LatentMethod
from latentreason.methods.coconut import Coconut
from latentreason.methods.coprocessor import Coprocessor
from latentreason.methods.cot import CoT, NoCoT
from latentreason.methods.looped import Looped
from latentreason.methods.soft_tokens import SoftTokens

METHODS: dict[str, type[LatentMethod]] = {
    "no_cot": NoCoT,
    "cot": CoT,
    "soft_tokens": SoftTokens,
    "coconut": Coconut,
    "coprocessor": Coprocessor,
    "looped": Looped,
}
"""method.name -> class. Each key equals its class's `name` and options.MethodName lists the same names
(tests/test_method_contract.py checks both)."""
