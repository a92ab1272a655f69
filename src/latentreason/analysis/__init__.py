"""Metrics and figures for studying latent vectors from latent-reasoning methods.

Latents are arrays ``Z [n_examples, n_slots, d]``. See :mod:`.similarity` for the
geometry metrics, :mod:`.logit_lens` for decoding latents through the LM head and
:mod:`.plots` for figures and :mod:`.nulls` for the null value of every metric at the data's n, d and rank.
"""

from latentreason.analysis.logit_lens import find_final_norm_and_head, logit_lens
from latentreason.analysis.nulls import latent_nulls, null_interval, pair_nulls
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
    silhouette_labelings,
    slot_silhouette,
    summarize_latents,
)

__all__ = [
    "captured_variance",
    "cross_capture",
    "effective_rank",
    "find_final_norm_and_head",
    "latent_nulls",
    "linear_cka",
    "logit_lens",
    "mean_off_diagonal",
    "null_interval",
    "pair_nulls",
    "plot_heatmap",
    "plot_lines",
    "plot_logit_lens",
    "principal_angles",
    "principal_angles_between_bases",
    "principal_subspace",
    "silhouette",
    "silhouette_labelings",
    "slot_silhouette",
    "summarize_latents",
]
