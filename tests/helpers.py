"""Small helpers shared by test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


def fit(method, encoded, steps: int = 12, lr: float = 1e-2) -> None:
    """A few AdamW steps on `encoded`, so greedy outputs vary and are not one constant token."""
    method.train()
    optimizer = torch.optim.AdamW(method.parameters(), lr=lr)
    for _ in range(steps):
        loss = method(method.collate(encoded))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()
