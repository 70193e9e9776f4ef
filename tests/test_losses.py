"""Losses against values worked out by hand, plus gradients and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.losses import (
    LossError,
    differ_only_in_nuisance,
    interventional_loss,
    orthogonality_penalty,
    same_value,
    supervised_contrastive_loss,
)

# Four unit vectors with known cosines:
#   cos(0,1) = 0.6, cos(0,2) = 0, cos(0,3) = -1, cos(1,2) = 0.8, cos(1,3) = -0.6, cos(2,3) = 0
VECTORS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
SAME_SPEAKER = same_value(torch.tensor([0, 0, 1, 1]))  # pairs {0,1} and {2,3}


def test_same_value_mask():
    assert same_value(torch.tensor([1, 2, 1])).tolist() == [[True, False, True], [False, True, False], [True, False, True]]


def test_contrastive_four_vectors_by_hand():
    # temperature 0.5: logits = 2 * cos; the softmax runs over j != i.
    # anchor 0: logits (j1, j2, j3) = (1.2, 0, -2),    positive j1: -1.2 + log(e^1.2 + e^0 + e^-2)   = 0.294128
    # anchor 1: logits (j0, j2, j3) = (1.2, 1.6, -1.2), positive j0: -1.2 + log(e^1.2 + e^1.6 + e^-1.2) = 0.948774
    # anchor 2: logits (j0, j1, j3) = (0, 1.6, 0),     positive j3: -0 + log(1 + e^1.6 + 1)          = 1.939177
    # anchor 3: logits (j0, j1, j2) = (-2, -1.2, 0),   positive j2: -0 + log(e^-2 + e^-1.2 + 1)      = 0.362230
    # mean = (0.294128 + 0.948774 + 1.939177 + 0.362230) / 4 = 0.886078
    e = math.exp
    by_hand = (
        (-1.2 + math.log(e(1.2) + 1 + e(-2)))
        + (-1.2 + math.log(e(1.2) + e(1.6) + e(-1.2)))
        + math.log(2 + e(1.6))
        + math.log(e(-2) + e(-1.2) + 1)
    ) / 4
    assert by_hand == pytest.approx(0.886078, abs=1e-6)
    loss = supervised_contrastive_loss(VECTORS, SAME_SPEAKER, temperature=0.5)
    assert loss.item() == pytest.approx(by_hand, abs=1e-5)


def test_contrastive_multi_positive_target_is_uniform_and_lonely_anchor_skipped():
    # items 0 and 1 are the same vector (1,0), item 2 is (0,1), item 3 is (-1,0); labels a a a b.
    # temperature 1. anchor 0: logits (j1, j2, j3) = (1, 0, -1); lse = log(e + 1 + e^-1) = 1.407606;
    #   positives j1, j2: loss = -((1 - 1.407606) + (0 - 1.407606)) / 2 = 0.907606. Anchor 1 is the same.
    # anchor 2: logits (j0, j1, j3) = (0, 0, 0), positives j0, j1: -(log 1/3 + log 1/3) / 2 = log 3 = 1.098612.
    # anchor 3 has no other "b": skipped. mean over 3 anchors = (2 * 0.907606 + 1.098612) / 3 = 0.971275
    vectors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    same_content = same_value(torch.tensor([0, 0, 0, 1]))
    loss = supervised_contrastive_loss(vectors, same_content, temperature=1.0)
    assert loss.item() == pytest.approx(0.971275, abs=1e-5)


def test_contrastive_margin_is_subtracted_from_positive_logits():
    # (1,0), (0,1), (-1,0), (0,-1) with pairs {0,1}, {2,3}; temperature 1, margin 0.5.
    # anchor 0: positive j1 has cos 0 -> logit -0.5; negatives j2 cos -1, j3 cos 0.
    #   loss = 0.5 + log(e^-0.5 + e^-1 + e^0) = 0.5 + log(1.974410) = 1.180269; all anchors are symmetric.
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    loss = supervised_contrastive_loss(vectors, SAME_SPEAKER, temperature=1.0, margin=0.5)
    assert loss.item() == pytest.approx(1.180269, abs=1e-5)
    no_margin = supervised_contrastive_loss(vectors, SAME_SPEAKER, temperature=1.0)
    assert no_margin.item() == pytest.approx(math.log(2 + math.exp(-1)), abs=1e-5)


def test_contrastive_without_any_positive_raises():
    with pytest.raises(LossError, match="no anchor"):
        supervised_contrastive_loss(VECTORS, same_value(torch.arange(4)))
    # the diagonal alone does not count as a positive
    with pytest.raises(LossError, match="no anchor"):
        supervised_contrastive_loss(VECTORS, torch.eye(4, dtype=torch.bool))


def test_contrastive_invariances():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    same = same_value(torch.tensor([0, 0, 1, 1, 2, 2]))
    reference = supervised_contrastive_loss(x, same)
    # cosine: invariant to scaling each row and to a common rotation
    rotation, _ = torch.linalg.qr(torch.randn(5, 5))
    assert supervised_contrastive_loss(x * (0.1 + 10 * torch.rand(6, 1)), same).item() == pytest.approx(reference.item(), rel=1e-5)
    assert supervised_contrastive_loss(x @ rotation, same).item() == pytest.approx(reference.item(), rel=1e-5)
    # relabelling the items (permuting rows and the mask together) changes nothing
    order = torch.randperm(6)
    assert supervised_contrastive_loss(x[order], same[order][:, order]).item() == pytest.approx(reference.item(), rel=1e-5)


def test_contrastive_gradient_is_finite_matches_finite_differences_and_descends():
    torch.manual_seed(1)
    same = same_value(torch.tensor([0, 0, 1, 1, 2]))  # item 4 has no positive
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: supervised_contrastive_loss(v, same, temperature=0.5), (x,))
    loss = supervised_contrastive_loss(x, same, temperature=0.5)
    (gradient,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gradient).all()
    stepped = supervised_contrastive_loss(x.detach() - 0.05 * gradient, same, temperature=0.5)
    assert stepped < loss


def test_orthogonality_by_hand():
    # rows are unit-normalised first: b = [[3,0],[2,0]] -> [[1,0],[1,0]].
    # a = identity rows, so C = a^T b / 2 = [[0.5, 0], [0.5, 0]]; mean of squares = (0.25 + 0.25) / 4 = 0.125
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
    assert orthogonality_penalty(a, b).item() == pytest.approx(0.125)
    # a subspace compared with itself: C = a^T a / 2 = I / 2 -> mean of squares = (0.25 + 0.25) / 4
    assert orthogonality_penalty(a, a).item() == pytest.approx(0.125)
    # independent features: a varies only in dim 0, c only in dim 1 with opposite signs -> C = 0
    c = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    assert orthogonality_penalty(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), c).item() == pytest.approx(0.0)
    with pytest.raises(LossError, match="same B"):
        orthogonality_penalty(a, torch.ones(3, 2))


def test_nuisance_mask_by_hand():
    # items: (speaker a, text x, channel 0), (a, x, 1), (a, y, 0), (b, x, 0), (a, x, 0)
    speaker = torch.tensor([0, 0, 0, 1, 0])
    content = torch.tensor([0, 0, 1, 0, 0])
    channel = torch.tensor([0, 1, 0, 0, 0])
    mask = differ_only_in_nuisance({"speaker": speaker, "content": content}, channel)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in [(0, 1), (1, 4)]:  # 0 and 4 share the channel too: not "differ only in the nuisance"
        expected[i, j] = expected[j, i] = True
    assert torch.equal(mask, expected)


def test_interventional_loss_combines_terms_by_hand():
    # speaker subspace: VECTORS with pairs {0,1},{2,3} (0.886078 at temperature 0.5, above).
    # content subspace: (1,0),(0,1),(-1,0),(0,-1) with content pairs {0,2},{1,3}.
    #   temperature 0.5: anchor 0: positive j2 has cos -1 -> logit -2; negatives j1, j3 cos 0 -> 0.
    #   loss = 2 + log(1 + e^-2 + 1) = 2.758621 for every anchor.
    # orthogonality: speaker rows are unit already; C = S^T K / 4 with
    #   S^T K = sum_i s_i k_i^T = [1,0]^T[1,0] + [.6,.8]^T[0,1] + [0,1]^T[-1,0] + [-1,0]^T[0,-1]
    #         = [[1, .6 + 1], [-1, .8]] = [[1, 1.6], [-1, 0.8]]; C = that / 4
    #   mean(C^2) = (1 + 2.56 + 1 + 0.64) / 16 / 4 = 5.2 / 64 = 0.08125
    content_vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    factors = {"speaker": torch.tensor([0, 0, 1, 1]), "content": torch.tensor([0, 1, 0, 1])}
    total, terms = interventional_loss(
        {"speaker": VECTORS, "content": content_vectors}, factors, temperature=0.5, orthogonality_weight=2.0,
        factor_weights={"content": 0.5},
    )
    assert terms["contrastive/speaker"].item() == pytest.approx(0.886078, abs=1e-5)
    assert terms["contrastive/content"].item() == pytest.approx(2 + math.log(2 + math.exp(-2)), abs=1e-5)
    assert terms["orthogonality/speaker-content"].item() == pytest.approx(0.08125, abs=1e-6)
    assert total.item() == pytest.approx(0.886078 + 0.5 * 2.758621 + 2.0 * 0.08125, abs=1e-5)


def test_nuisance_adds_positives_to_residual_only_where_items_differ_only_in_nuisance():
    torch.manual_seed(2)
    speaker = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    content = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    channel = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    outputs = {"speaker": torch.randn(8, 3), "content": torch.randn(8, 3), "residual": torch.randn(8, 3)}
    factors = {"speaker": speaker, "content": content}
    _, plain = interventional_loss(outputs, factors)
    _, with_nuisance = interventional_loss(outputs, factors, nuisance=channel)
    assert "contrastive/residual" not in plain
    # factor subspaces: the extra positives already share the factor, so nothing changes
    for name in ("speaker", "content"):
        assert with_nuisance[f"contrastive/{name}"].item() == pytest.approx(plain[f"contrastive/{name}"].item())
    # residual: positives are exactly item i and item i +- 4 (same speaker and text, other channel)
    partner = torch.zeros(8, 8, dtype=torch.bool)
    for i in range(4):
        partner[i, i + 4] = partner[i + 4, i] = True
    expected = supervised_contrastive_loss(outputs["residual"], partner)
    assert with_nuisance["contrastive/residual"].item() == pytest.approx(expected.item())
    assert {"orthogonality/speaker-residual", "orthogonality/content-residual"} <= set(with_nuisance)


def test_interventional_loss_errors_name_the_problem():
    outputs = {"speaker": torch.randn(4, 2)}
    with pytest.raises(LossError, match="content"):
        interventional_loss(outputs, {"content": torch.tensor([0, 0, 1, 1])})
    with pytest.raises(LossError, match="nothing to contrast"):
        interventional_loss({"residual": torch.randn(4, 2)}, {})
