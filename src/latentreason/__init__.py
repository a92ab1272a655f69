"""latentreason: latent reasoning in LLMs under one interface."""

__version__ = "0.1.0"
