"""Metrics and figures for studying latent vectors from latent-reasoning methods.

Latents are arrays ``Z [n_examples, n_slots, d]``. See :mod:`.similarity` for the
geometry metrics, :mod:`.logit_lens` for decoding latents through the LM head and
:mod:`.plots` for figures.
"""

from latentreason.analysis.logit_lens import find_final_norm_and_head, logit_lens
from latentreason.analysis.plots import plot_heatmap, plot_lines, plot_logit_lens
from latentreason.analysis.similarity import (
    captured_variance,
    cross_capture,
    effective_rank,
    linear_cka,
    mean_off_diagonal,
    principal_angles,
    principal_angles_between_bases,
    principal_subspace,
    silhouette,
    slot_silhouette,
    summarize_latents,
)

__all__ = [
    "captured_variance",
    "cross_capture",
    "effective_rank",
    "find_final_norm_and_head",
    "linear_cka",
    "logit_lens",
    "mean_off_diagonal",
    "plot_heatmap",
    "plot_lines",
    "plot_logit_lens",
    "principal_angles",
    "principal_angles_between_bases",
    "principal_subspace",
    "silhouette",
    "slot_silhouette",
    "summarize_latents",
]
