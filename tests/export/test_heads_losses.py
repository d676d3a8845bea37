"""Each paper loss pinned to its equation: hand-computed values and the limits the papers state."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from export.heads.losses import (
    augmenter_loss,
    discrepancy,
    het_loss,
    hom_loss,
    margin_fake_loss,
    orth_loss,
    soft_contrastive_loss,
    student_real_loss,
    supcon_loss,
)

# -- GenDet ----------------------------------------------------------------------------------------------


def test_student_loss_is_zero_when_student_equals_teacher_and_mse_otherwise() -> None:
    z = torch.randn(5, 4, 7)
    assert float(student_real_loss(z, z.clone())) == 0.0
    assert float(student_real_loss(torch.zeros(2, 3), torch.full((2, 3), 2.0))) == pytest.approx(4.0)  # (0 - 2)^2
    assert torch.equal(discrepancy(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])), torch.tensor([1.0, 4.0]))


def test_margin_loss_is_zero_past_the_margin_and_m_minus_distance_inside() -> None:
    t = torch.tensor([[1.0, 0.0]])
    assert float(margin_fake_loss(t, -t, margin=2.0)) == 0.0  # opposite unit vectors: ||t - s||^2 = 4 > M
    assert float(margin_fake_loss(t, torch.tensor([[0.0, 5.0]]), margin=2.0)) == pytest.approx(0.0, abs=1e-6)  # orthogonal: distance 2 = M
    assert float(margin_fake_loss(t, 3 * t, margin=2.0)) == pytest.approx(2.0)  # same direction: distance 0, loss M
    s = torch.tensor([[1.0, 1.0]])  # 45 degrees: ||t/|t| - s/|s|||^2 = 2 - sqrt(2)
    assert float(margin_fake_loss(t, s, margin=2.0)) == pytest.approx(math.sqrt(2.0), rel=1e-5)
    assert float(margin_fake_loss(t, s, margin=0.5)) == 0.0  # 0.586 > 0.5


def test_augmenter_loss_is_the_fake_discrepancy() -> None:
    a, b = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    assert float(augmenter_loss(a, b)) == pytest.approx(float(((a - b) ** 2).mean()))


# -- NTF --------------------------------------------------------------------------------------------------


def test_orth_loss_is_zero_for_orthogonal_features_and_one_for_parallel_or_antiparallel() -> None:
    hom = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(orth_loss(hom, torch.tensor([[0.0, 3.0], [4.0, 0.0]]))) == pytest.approx(0.0)
    assert float(orth_loss(hom, hom * 2)) == pytest.approx(1.0)
    assert float(orth_loss(hom, -hom)) == pytest.approx(1.0)


def test_hom_loss_is_the_largest_distance_between_different_images_only() -> None:
    h1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    h2 = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])  # image 0's two views are opposite: excluded (same source)
    # different-source pairs: (1,0)-(0,1): 2, (1,0)-(0,1): 2, (-1,0)-(0,1): 2 -> max 2, not 4
    assert float(hom_loss(h1, h2)) == pytest.approx(2.0)
    same = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    assert float(hom_loss(same, same)) == pytest.approx(0.0, abs=1e-6)  # one shared direction: collapsed, zero


def test_het_loss_matches_nt_xent_by_hand() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    tau = 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(6):
        p = (i + 3) % 6
        num = math.exp(float(z[i] @ z[p]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(6) if k != i)
        total += -math.log(num / den)
    assert float(het_loss(z1, z2, tau)) == pytest.approx(total / 6, rel=1e-5)


def _supcon_by_hand(z: torch.Tensor, labels: list[int], tau: float) -> float:
    z = F.normalize(z, dim=1)
    losses = []
    for i in range(len(z)):
        pos = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(len(z)) if k != i)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / den) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_soft_contrastive_reduces_to_supcon_when_eta_is_zero() -> None:
    torch.manual_seed(1)
    z, labels, hom = torch.randn(6, 5), torch.tensor([0, 0, 1, 1, 1, 0]), torch.randn(3, 5)
    expected = _supcon_by_hand(z, labels.tolist(), 0.2)
    assert float(supcon_loss(z, labels, 0.2)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_contrastive_loss(z, labels, hom, eta=0.0, tau=0.2)) == pytest.approx(expected, rel=1e-5)


def test_soft_contrastive_pulls_real_anchors_to_homogeneous_features_and_pushes_fakes_away() -> None:
    torch.manual_seed(2)
    z, labels, hom = torch.randn(6, 5), torch.tensor([0, 0, 1, 1, 1, 0]), torch.randn(3, 5)
    tau, eta = 0.2, 0.5
    zn = F.normalize(z, dim=1)
    h = F.normalize(hom, dim=1).mean(0)
    y = torch.where(labels == 0, 1.0, -1.0)
    # eq. 5 with the log: SupCon minus eta * y * z_i . mean_j z_j^hom / tau, averaged over anchors
    expected = _supcon_by_hand(z, labels.tolist(), tau) - float((eta * y * (zn @ h) / tau).mean())
    assert float(soft_contrastive_loss(z, labels, hom, eta=eta, tau=tau)) == pytest.approx(expected, rel=1e-5)
    # the homogeneous term rewards a real anchor on the homogeneous direction ...
    real_on = z.clone()
    real_on[0] = F.normalize(hom, dim=1).mean(0) * 10
    assert float(soft_contrastive_loss(real_on, labels, hom, eta, tau) - soft_contrastive_loss(real_on, labels, hom, 0.0, tau)) < float(
        soft_contrastive_loss(z, labels, hom, eta, tau) - soft_contrastive_loss(z, labels, hom, 0.0, tau)
    )
    # ... and penalises a fake anchor there
    moved = z.clone()
    moved[2] = F.normalize(hom, dim=1).mean(0) * 10
    assert float(soft_contrastive_loss(moved, labels, hom, eta, tau) - soft_contrastive_loss(moved, labels, hom, 0.0, tau)) > float(
        soft_contrastive_loss(z, labels, hom, eta, tau) - soft_contrastive_loss(z, labels, hom, 0.0, tau)
    )
