"""The papers' losses, one function each, written to read like their equations.

Each function is pinned to its equation by a unit test (tests/export/test_heads_losses.py):
values on hand-made inputs, and the limits the papers state (the margin loss is
zero past M, the student loss is zero when student == teacher, ...).

Reductions: the papers write sums over a batch; here every loss is a *mean*
over the batch (and over feature elements for the squared discrepancies), so
that loss scales, and with them the paper's weights alpha/lambda/eta/gamma,
do not change with the batch size or the feature width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# -- GenDet (seed 001) ----------------------------------------------------------------------------


def discrepancy(z_t: torch.Tensor, z_s: torch.Tensor) -> torch.Tensor:
    """Eq. 4: D = (z_t - z_s)^2, element-wise (same shape as the features)."""
    return (z_t - z_s) ** 2


def student_real_loss(z_t: torch.Tensor, z_s: torch.Tensor) -> torch.Tensor:
    """Eq. 1: L_dis^r = 1/B sum_b (z_t^r - z_s^r)^2 (mean over feature elements too)."""
    return discrepancy(z_t, z_s).mean()


def margin_fake_loss(z_t: torch.Tensor, z_s: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Eq. 2: L_dis^f = [M - || z_t/||z_t|| - z_s/||z_s|| ||^2]_+, per sample, mean over the batch.

    Features are flattened per sample before normalising. The squared distance
    of unit vectors lies in [0, 4]: M = 2 asks for cos(z_t, z_s) <= 0.
    """
    t = F.normalize(z_t.flatten(1), dim=1)
    s = F.normalize(z_s.flatten(1), dim=1)
    dist = ((t - s) ** 2).sum(dim=1)
    return torch.clamp(margin - dist, min=0).mean()


def augmenter_loss(z_t: torch.Tensor, z_s: torch.Tensor) -> torch.Tensor:
    """Eq. 3: L_dis^g = 1/B sum_b (N_t(G(x^f)) - N_s(G(x^f)))^2 — G minimises it."""
    return discrepancy(z_t, z_s).mean()


# -- NTF (seed 003) ----------------------------------------------------------------------------------


def het_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Eq. 1: self-supervised contrastive loss over the 2N views (NT-Xent / SimCLR).

    ``z1[i]`` and ``z2[i]`` are the two views of image i (each the other's
    positive p); the denominator runs over K(i) = every view but i itself.
    Features are L2-normalised (cosine similarity), as in SimCLR/SupCon.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positive)


def hom_loss(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """Eq. 2, read as the largest squared distance between homogeneous features of *different* images.

    The paper writes ``argmax_{i in I, k in K'(i)} ||z_k^hom - z_i^hom||_F^2``;
    an argmax is an index, not a loss, so we take the max itself: minimising the
    hardest (largest) pairwise distance pulls every real image's homogeneous
    feature into one tight cluster, which is what "homogeneous" asks. K'(i)
    excludes i and its own second view (2N - 2 candidates). Features are
    L2-normalised, so the value lies in [0, 4].
    """
    z = F.normalize(torch.cat([h1, h2]), dim=1)
    n = len(h1)
    dist = torch.cdist(z, z) ** 2
    source = torch.cat([torch.arange(n), torch.arange(n)]).to(z.device)
    different = source[:, None] != source[None, :]
    if not bool(different.any()):
        return dist.sum() * 0.0
    return dist[different].max()


def orth_loss(hom: torch.Tensor, het: torch.Tensor) -> torch.Tensor:
    """Eq. 3, soft orthogonality: mean_i |cos(z_i^hom, z_i^het)|.

    The paper writes sum_i cos(.,.), which is minimised by *anti-parallel*
    features (cos = -1), not orthogonal ones; the absolute value makes
    orthogonality (cos = 0) the minimum, which is what the text asks for.
    """
    return F.cosine_similarity(hom, het, dim=1).abs().mean()


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., L_out): positives share the anchor's label.

    Anchors without any positive in the batch are skipped. With labels real=0,
    fake=1 this puts "all fakes in one class" (AIRL, seed 004).
    """
    return soft_contrastive_loss(z, labels, None, eta=0.0, tau=tau)


def soft_contrastive_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    hom: torch.Tensor | None,
    eta: float = 0.5,
    tau: float = 0.1,
) -> torch.Tensor:
    """NTF eq. 5, the soft contrastive loss, with the log that SupCon has.

    For anchor i with positives P(i) (same label, i excluded), denominator over
    K(i) = all samples but i, homogeneous features J (real images' z^hom in the
    batch) and y = +1 for a real anchor, -1 for a fake one::

        L = mean_i  -1/(|P(i)| |J|) sum_p sum_j log( exp(z_i . (z_p + y eta z_j^hom) / tau)
                                                     / sum_k exp(z_i . z_k / tau) )

    The printed equation has no log and sums over J; with the log and the mean
    over J it is SupCon plus a pull of real anchors toward (and a push of fake
    anchors away from) the homogeneous features, weighted by eta, and it reduces
    exactly to SupCon when eta = 0 (a unit test checks both).
    """
    z = F.normalize(z, dim=1)
    n = len(z)
    labels = labels.reshape(-1)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / tau).masked_fill(eye, float("-inf"))
    log_denominator = torch.logsumexp(logits, dim=1)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(dim=1)
    has = count > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    pos_sim = (z @ z.T / tau).masked_fill(~positive, 0.0).sum(dim=1) / count.clamp(min=1)
    per_anchor = pos_sim - log_denominator
    if hom is not None and eta != 0.0 and len(hom):
        y = torch.where(labels == 0, 1.0, -1.0).to(z.dtype)
        hom_mean = F.normalize(hom, dim=1).mean(dim=0)
        per_anchor = per_anchor + y * eta * (z @ hom_mean) / tau
    return -(per_anchor[has]).mean()
