"""Losses against hand-computed values, and MultiTaskLoss masking and weighting.

Reference batch: logits [[2, 1, 0], [0, 0, 0]], targets [0, 2].
  row 0: -log softmax_0 = log(e^2 + e + 1) - 2 = 0.4076060
  row 1: -log softmax_2 = log 3               = 1.0986123
"""

from __future__ import annotations

import math

import pytest
import torch

from llmser.config import ConfigError, from_dict
from llmser.training.losses import (
    LossConfig,
    MultiTaskLoss,
    ccc_loss,
    concordance_cc,
    focal_loss,
    inverse_frequency_weights,
    soft_label_cross_entropy,
    soft_label_kl,
    weighted_cross_entropy,
)

ROW0, ROW1 = 0.4076060, 1.0986123


def _batch():
    # The third row has no label and wild logits: it must not change anything.
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [50.0, -50.0, 9.0]])
    target = torch.tensor([0, 2, -1])
    return logits, target


def test_cross_entropy_and_weighted_cross_entropy_by_hand():
    logits, target = _batch()
    assert weighted_cross_entropy(logits, target).item() == pytest.approx((ROW0 + ROW1) / 2, abs=1e-6)
    weight = torch.tensor([2.0, 1.0, 0.5])
    # PyTorch's weighted mean: (2 * 0.4076 + 0.5 * 1.0986) / (2 + 0.5) = 0.5458072
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(0.5458072, abs=1e-6)


def test_label_smoothing_changes_the_loss_as_expected():
    logits, target = _batch()
    # With smoothing e over C=3 classes the row loss is (1 - e) * nll + e * mean_c(-log p_c).
    eps = 0.3
    lse0 = math.log(math.exp(2) + math.exp(1) + 1)
    row0 = (1 - eps) * ROW0 + eps * sum(lse0 - z for z in (2, 1, 0)) / 3
    row1 = ROW1  # uniform logits: every class has the same -log p
    got = weighted_cross_entropy(logits, target, label_smoothing=eps).item()
    assert got == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_focal_gamma_zero_is_cross_entropy_and_alpha_weights_rows():
    logits, target = _batch()
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx((ROW0 + ROW1) / 2, abs=1e-6)
    alpha = torch.tensor([2.0, 1.0, 0.5])
    # mean over labelled rows (not over the alpha sum): (2 * 0.4076 + 0.5 * 1.0986) / 2
    assert focal_loss(logits, target, gamma=0.0, alpha=alpha).item() == pytest.approx(0.6822590, abs=1e-6)
    assert focal_loss(logits, target, gamma=0.0, alpha=3.0).item() == pytest.approx(1.5 * (ROW0 + ROW1), abs=1e-5)
    # gamma 2: p0 = 0.665241 -> (1 - p0)^2 * 0.4076 ; p = 1/3 -> (2/3)^2 * 1.0986
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(0.2669750, abs=1e-6)
    per_row = focal_loss(logits, target, gamma=2.0, reduction="none")
    assert per_row.shape == (2,)


def test_soft_cross_entropy_one_hot_equals_cross_entropy_and_by_hand():
    logits, target = _batch()
    one_hot = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 0]])  # last row: no soft label
    weight = torch.tensor([2.0, 1.0, 0.5])
    assert soft_label_cross_entropy(logits, one_hot).item() == pytest.approx(
        weighted_cross_entropy(logits, target).item(), abs=1e-6)
    assert soft_label_cross_entropy(logits, one_hot, weight).item() == pytest.approx(
        weighted_cross_entropy(logits, target, weight).item(), abs=1e-6)
    half = torch.tensor([[0.5, 0.5, 0.0]])
    # -(0.5 log p0 + 0.5 log p1) = 0.5 * 0.4076 + 0.5 * 1.4076 = 0.9076060
    assert soft_label_cross_entropy(logits[:1], half).item() == pytest.approx(0.9076060, abs=1e-6)


def test_kl_is_zero_when_distributions_match_and_positive_otherwise():
    q = torch.tensor([[0.2, 0.3, 0.5], [0.0, 0.0, 0.0]])  # second row ignored
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]))
    assert soft_label_kl(logits, q).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(2, 3)
    expected = sum(p * math.log(p * 3) for p in (0.2, 0.3, 0.5))  # KL(q || uniform)
    assert soft_label_kl(uniform, q).item() == pytest.approx(expected, abs=1e-6)


def test_losses_without_any_target_are_zero_and_keep_the_graph():
    logits = torch.randn(2, 3, requires_grad=True)
    for loss in (weighted_cross_entropy(logits, torch.tensor([-1, -1])),
                 focal_loss(logits, torch.tensor([-1, -1])),
                 soft_label_cross_entropy(logits, torch.zeros(2, 3)),
                 soft_label_kl(logits, torch.zeros(2, 3))):
        assert loss.item() == 0.0
        loss.backward()
        assert torch.all(logits.grad == 0)


def test_ccc_zero_for_identical_and_hand_computed_example():
    x = torch.tensor([[1.0, 4.0], [2.0, 5.0], [3.0, 7.0]])
    assert torch.allclose(ccc_loss(x, x), torch.zeros(2), atol=1e-6)
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([1.0, 2.0, 4.0])
    # means 2 and 7/3; var 2/3 and 14/9; cov 1 -> CCC = 2 / (2/3 + 14/9 + 1/9) = 6/7
    assert concordance_cc(pred, target).item() == pytest.approx(6 / 7, abs=1e-6)
    assert ccc_loss(pred, target).item() == pytest.approx(1 / 7, abs=1e-6)
    three = torch.stack([pred, pred, pred], dim=1), torch.stack([target, pred, target], dim=1)  # (3, 3)
    per_column = ccc_loss(*three)
    assert per_column.shape == (3,)
    assert torch.allclose(per_column, torch.tensor([1 / 7, 0.0, 1 / 7]), atol=1e-6)
    assert ccc_loss(*three, reduction="mean").item() == pytest.approx(2 / 21, abs=1e-6)


@pytest.mark.parametrize("target", [[3.0, 5.0], [4.0, 4.0]])
@pytest.mark.parametrize("pred", [[1.0, 2.0], [4.0, 4.0]])
def test_ccc_gradient_finite_for_batch_of_two_and_constant_values(pred, target):
    p = torch.tensor(pred, requires_grad=True)
    loss = ccc_loss(p, torch.tensor(target))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_inverse_frequency_weights_by_hand():
    counts = [10, 30, 0, 60]  # N = 100, K = 4 -> N / (K n_c) = 2.5, 0.8333, (absent), 0.41667
    raw = inverse_frequency_weights(counts, normalise=False)
    assert torch.allclose(raw, torch.tensor([2.5, 100 / 120, 0.0, 100 / 240]))
    normalised = inverse_frequency_weights(counts)  # present classes average 1: divide by 3.75 / 3
    assert torch.allclose(normalised, torch.tensor([2.0, 2 / 3, 0.0, 1 / 3]))
    half = inverse_frequency_weights(counts, smoothing=0.5, normalise=False)
    assert torch.allclose(half, torch.tensor([1.5811388, 0.9128709, 0.0, 0.6454972]))
    assert torch.allclose(inverse_frequency_weights(counts, smoothing=1.0), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="smoothing"):
        inverse_frequency_weights(counts, smoothing=2.0)
    with pytest.raises(ValueError, match="no task-1 labels"):
        inverse_frequency_weights([0, 0])


def _multitask_batch():
    nan = float("nan")
    batch = {
        "label": torch.tensor([0, -1, 2, 1]),
        "soft_label": torch.zeros(4, 8),
        "attributes": torch.tensor([[2.0, 3.0, nan], [4.0, nan, 5.0], [6.0, 5.0, 2.0], [nan, 1.0, 3.0]]),
    }
    torch.manual_seed(0)
    logits = torch.randn(4, 8, requires_grad=True)
    attrs = torch.randn(4, 3, requires_grad=True)
    return logits, attrs, batch


def test_multitask_masks_missing_targets_and_weights_the_sum():
    logits, attrs, batch = _multitask_batch()
    counts = [10, 30, 60, 0, 5, 5, 5, 5]
    config = LossConfig(class_loss="weighted_ce", attribute_loss="ccc", class_weight=2.0, attribute_weight=0.5,
                        attribute_weights=(1.0, 0.0, 1.0))
    out = MultiTaskLoss(config, class_counts=counts)(logits, attrs, batch)

    keep = torch.tensor([0, 2, 3])
    weight = inverse_frequency_weights(counts)
    class_expected = weighted_cross_entropy(logits[keep], batch["label"][keep], weight)
    a = batch["attributes"]
    ccc_a = ccc_loss(attrs[[0, 1, 2], 0], a[[0, 1, 2], 0])
    ccc_d = ccc_loss(attrs[[1, 2, 3], 2], a[[1, 2, 3], 2])
    expected = 2.0 * class_expected + 0.5 * (ccc_a + ccc_d) / 2
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert out["class_loss"].item() == pytest.approx(class_expected.item(), abs=1e-6)
    assert out["ccc_arousal"].item() == pytest.approx(1 - ccc_a.item(), abs=1e-6)
    assert not out["class_loss"].requires_grad and out["loss"].requires_grad
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.all(logits.grad[1] == 0)  # the unlabelled row gets no class gradient
    assert attrs.grad[3, 0] == 0 and attrs.grad[0, 2] == 0  # NaN targets get no gradient
    assert attrs.grad[:, 1].abs().sum() == 0  # valence has weight 0


def test_multitask_mse_and_single_heads():
    logits, attrs, batch = _multitask_batch()
    loss = MultiTaskLoss(LossConfig(class_loss="ce", attribute_loss="ccc+mse"))
    out = loss(None, attrs, batch)
    a = batch["attributes"]
    mse_v = torch.mean((attrs[[0, 2, 3], 1] - a[[0, 2, 3], 1]) ** 2)
    assert out["mse_valence"].item() == pytest.approx(mse_v.item(), abs=1e-6)
    assert "class_loss" not in out
    only_class = loss(logits, None, batch)
    assert only_class["loss"].item() == pytest.approx(
        weighted_cross_entropy(logits, batch["label"]).item(), abs=1e-6)
    with pytest.raises(ValueError, match="neither"):
        loss(None, None, batch)


def test_auxiliary_class_logits_add_their_weighted_class_loss():
    logits, attrs, batch = _multitask_batch()
    aux = torch.randn(4, 8, requires_grad=True)
    counts = [10, 30, 60, 0, 5, 5, 5, 5]
    loss = MultiTaskLoss(LossConfig(auxiliary_class_weight=0.25), class_counts=counts)
    plain = loss(logits, attrs, batch)
    out = loss(logits, attrs, batch, aux)
    aux_expected = loss.class_loss(aux, batch)
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + 0.25 * aux_expected.item(), abs=1e-5)
    assert out["auxiliary_class_loss"].item() == pytest.approx(aux_expected.item(), abs=1e-6)
    out["loss"].backward()
    assert aux.grad[0].abs().sum() > 0 and torch.all(aux.grad[1] == 0)  # row 1 has no class label
    off = MultiTaskLoss(LossConfig(auxiliary_class_weight=0.0), class_counts=counts)(logits, attrs, batch, aux)
    assert off["loss"].item() == pytest.approx(plain["loss"].item(), abs=1e-6) and "auxiliary_class_loss" not in off
    with pytest.raises(ValueError, match="auxiliary_class_weight"):
        LossConfig(auxiliary_class_weight=-1.0)


def test_multitask_soft_losses_fall_back_to_one_hot_and_use_soft_labels():
    logits, _, batch = _multitask_batch()
    counts = [10, 30, 60, 5, 5, 5, 5, 5]
    soft_ce = MultiTaskLoss(LossConfig(class_loss="soft_ce"), class_counts=counts)
    weighted = MultiTaskLoss(LossConfig(class_loss="weighted_ce"), class_counts=counts)
    assert soft_ce(logits, None, batch)["loss"].item() == pytest.approx(
        weighted(logits, None, batch)["loss"].item(), abs=1e-6)
    batch["soft_label"][1, :2] = 0.5  # the row without a task-1 label (X/O) now has annotator votes
    rows = torch.nn.functional.one_hot(batch["label"].clamp_min(0), 8).float()
    rows[1] = 0.0  # task 1 leaves X/O out: by default its votes are not learned either
    for loss in ("soft_kl", "soft_ce"):
        left_out = MultiTaskLoss(LossConfig(class_loss=loss))(logits, None, batch)["loss"]
        expected = soft_label_kl(logits, rows) if loss == "soft_kl" else soft_label_cross_entropy(logits, rows)
        assert left_out.item() == pytest.approx(expected.item(), abs=1e-6), loss
    rows[1] = batch["soft_label"][1]  # unless the recipe says so
    kl = MultiTaskLoss(LossConfig(class_loss="soft_kl", soft_labels_on_xo=True))(logits, None, batch)["loss"]
    assert kl.item() == pytest.approx(soft_label_kl(logits, rows).item(), abs=1e-6)
    focal = MultiTaskLoss(LossConfig(class_loss="focal", focal_gamma=0.0))(logits, None, batch)["loss"]
    assert focal.item() == pytest.approx(weighted_cross_entropy(logits, batch["label"]).item(), abs=1e-6)


def test_multitask_batch_without_targets_is_zero_but_backpropagates():
    logits, attrs, batch = _multitask_batch()
    batch["label"][:] = -1
    batch["attributes"][:] = float("nan")
    out = MultiTaskLoss(LossConfig(attribute_loss="ccc+mse"), class_counts=[1] * 8)(logits, attrs, batch)
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_loss_config_from_yaml_mapping_and_validation():
    cfg = from_dict(LossConfig, {"class_loss": "focal", "attribute_weights": [1, 2, 3]})
    assert cfg.attribute_weights == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match="attribute_weights"):
        from_dict(LossConfig, {"attribute_weights": [1, 2]})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(LossConfig, {"class_loss": "hinge"})


def test_soft_label_losses_count_the_xo_files_they_leave_out(caplog):
    from llmser.training.engine import _log_soft_label_rows

    _log_soft_label_rows(LossConfig(class_loss="soft_ce"), [0, -1, 3, -1])
    _log_soft_label_rows(LossConfig(class_loss="soft_kl", soft_labels_on_xo=True), [-1, 2])
    _log_soft_label_rows(LossConfig(class_loss="weighted_ce"), [-1])
    messages = [r.getMessage() for r in caplog.records]
    assert any("soft_ce: 2 X/O training file(s)" in m and "left out of the class loss" in m for m in messages)
    assert any("soft_kl: the class loss also learns the annotator votes of 1 X/O" in m for m in messages)
    assert len(messages) == 2
