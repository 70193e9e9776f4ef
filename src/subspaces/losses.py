"""Interventional contrastive losses: one contrast per factor in its own subspace, plus
an orthogonality penalty between subspaces. Pure functions of tensors.

Notation: B items in a batch, E the width of one subspace. A factor is given as integer
codes `long[B]` (two items share a value when their codes are equal); masks are
`bool[B, B]` and named for what they mean (`same_speaker[i, j]`: i and j have the same
speaker).

>>> import torch
>>> outputs = {"speaker": torch.randn(4, 3), "content": torch.randn(4, 3)}
>>> factors = {"speaker": torch.tensor([0, 0, 1, 1]), "content": torch.tensor([0, 1, 0, 1])}
>>> total, terms = interventional_loss(outputs, factors)
>>> sorted(terms)
['contrastive/content', 'contrastive/speaker', 'orthogonality/speaker-content']
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .errors import SubspacesError

__all__ = [
    "LossError",
    "differ_only_in_nuisance",
    "interventional_loss",
    "orthogonality_penalty",
    "same_value",
    "supervised_contrastive_loss",
]

# The paper's temperature (Cox & Barker 2026, tau = 0.1).
DEFAULT_TEMPERATURE = 0.1


class LossError(SubspacesError, ValueError):
    """A loss that is undefined for its inputs (no positive pair, mismatched shapes...)."""


def same_value(codes: torch.Tensor) -> torch.Tensor:
    """`codes: long[B]` -> `bool[B, B]`, True where items i and j share the value (diagonal included).

    >>> same_value(torch.tensor([3, 3, 5])).int().tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    if codes.ndim != 1:
        raise LossError(f"factor codes must be a 1-D tensor [batch], got shape {list(codes.shape)}")
    return codes[:, None] == codes[None, :]


def supervised_contrastive_loss(
    embeddings: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    margin: float = 0.0,
) -> torch.Tensor:
    """Multi-positive supervised contrastive loss for one factor.

    embeddings: `float[B, E]`, compared by cosine similarity.
    positives: `bool[B, B]`, True where j is a positive for anchor i (e.g. `same_speaker`);
        the diagonal is ignored (an item is never its own positive or negative).
    Returns a scalar: the mean over anchors that have at least one positive of the cross
    entropy between a uniform target over the anchor's positives and
    `softmax_j((cos(i, j) - margin * positive(i, j)) / temperature)` over all j != i.
    Anchors without a positive are skipped; if no anchor has one, `LossError` is raised
    (the loss is undefined, and a silent 0 would hide a broken batch).

    >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> same = same_value(torch.tensor([0, 0, 1, 1]))
    >>> round(supervised_contrastive_loss(e, same, temperature=1.0).item(), 4)  # log(2 + e^-1)
    0.862
    """
    if embeddings.ndim != 2 or positives.shape != (embeddings.shape[0], embeddings.shape[0]):
        raise LossError(
            f"embeddings must be [B, E] and positives [B, B]; got {list(embeddings.shape)} and {list(positives.shape)}"
        )
    if temperature <= 0:
        raise LossError(f"temperature must be positive, got {temperature}")
    batch = embeddings.shape[0]
    is_self = torch.eye(batch, dtype=torch.bool, device=embeddings.device)
    positives = positives.to(torch.bool) & ~is_self
    positive_count = positives.sum(dim=1)
    has_positive = positive_count > 0
    if not has_positive.any():
        raise LossError(f"no anchor in the batch of {batch} has a positive; the contrastive loss is undefined")
    unit = F.normalize(embeddings, dim=1)
    cosine = unit @ unit.T
    logits = (cosine - margin * positives.to(cosine.dtype)) / temperature
    logits = logits.masked_fill(is_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positive_count.clamp_min(1)
    return per_anchor[has_positive].mean()


def orthogonality_penalty(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean squared cross-correlation between two subspaces.

    first: `float[B, E1]`, second: `float[B, E2]` (the same B items). Each row is scaled
    to unit length; `C = first.T @ second / B` (`float[E1, E2]`, feature x feature over
    the batch); returns `mean(C ** 2)`, 0 when no feature of one subspace co-varies
    (uncentred) with any feature of the other.

    >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0]]); b = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    >>> orthogonality_penalty(a, b).item()
    0.0
    """
    if first.ndim != 2 or second.ndim != 2 or first.shape[0] != second.shape[0]:
        raise LossError(f"subspaces must be [B, E1] and [B, E2] with the same B; got {list(first.shape)} and {list(second.shape)}")
    first, second = F.normalize(first, dim=1), F.normalize(second, dim=1)
    cross_correlation = first.T @ second / first.shape[0]
    return cross_correlation.pow(2).mean()


def differ_only_in_nuisance(factors: Mapping[str, torch.Tensor], nuisance: torch.Tensor) -> torch.Tensor:
    """`bool[B, B]`: i and j agree on every factor in `factors` (`long[B]` each) but not on
    the nuisance (`long[B]`, e.g. channel or noise condition).

    >>> differ_only_in_nuisance({"speaker": torch.tensor([0, 0, 0])}, torch.tensor([0, 1, 0])).int().tolist()
    [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    """
    agree = ~same_value(nuisance)
    for codes in factors.values():
        agree = agree & same_value(codes)
    return agree


def interventional_loss(
    outputs: Mapping[str, torch.Tensor],
    factors: Mapping[str, torch.Tensor],
    nuisance: torch.Tensor | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    margin: float = 0.0,
    orthogonality_weight: float = 1.0,
    factor_weights: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss: per-factor contrast in each factor's subspace + orthogonality.

    outputs: `{subspace name: float[B, E]}`; every factor needs a subspace of the same
        name; other subspaces (e.g. "residual") get no contrast of their own unless a
        nuisance is given.
    factors: `{factor name: long[B]}`, e.g. speaker and content codes.
    nuisance: `long[B]` or None. All subspaces must be invariant to it: items that differ
        only in the nuisance are extra positives in every subspace. For a factor subspace
        they already share that factor, so this adds nothing there; for a subspace
        without a factor (the residual) they are its only positives, which makes the
        residual encode the item while ignoring the nuisance.
    Returns `(total, terms)`: `terms["contrastive/<name>"]` per subspace contrasted,
    `terms["orthogonality/<a>-<b>"]` per pair of subspaces; `total` =
    sum(factor_weights[name] * contrastive) + orthogonality_weight * sum(orthogonality).
    """
    missing = [name for name in factors if name not in outputs]
    if missing:
        raise LossError(f"factor(s) {missing} have no subspace of the same name; subspaces: {sorted(outputs)}")
    weights = dict(factor_weights or {})
    unknown = sorted(set(weights) - set(outputs))
    if unknown:
        raise LossError(f"factor_weights names unknown subspace(s) {unknown}; subspaces: {sorted(outputs)}")
    extra_positives = None if nuisance is None else differ_only_in_nuisance(factors, nuisance)
    terms: dict[str, torch.Tensor] = {}
    for name, embeddings in outputs.items():
        if name in factors:
            positives = same_value(factors[name])
            if extra_positives is not None:
                positives = positives | extra_positives
        elif extra_positives is not None:
            positives = extra_positives
        else:
            continue
        terms[f"contrastive/{name}"] = supervised_contrastive_loss(embeddings, positives, temperature, margin)
    if not terms:
        raise LossError(f"nothing to contrast: no factor names one of the subspaces {sorted(outputs)} and no nuisance was given")
    for first, second in itertools.combinations(outputs, 2):
        terms[f"orthogonality/{first}-{second}"] = orthogonality_penalty(outputs[first], outputs[second])
    total = sum(
        weights.get(key.split("/", 1)[1], 1.0) * value for key, value in terms.items() if key.startswith("contrastive/")
    )
    total = total + orthogonality_weight * sum(v for k, v in terms.items() if k.startswith("orthogonality/"))
    return total, terms
