"""NTF's transfer: stage 1 trains the feature encoder, stage 2 freezes and reuses it; the initial learning rate decays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from export.heads.ntf import NTF
from tests.export.test_heads_export import FAST, toy_set


def trunk_state(method: NTF) -> dict[str, torch.Tensor]:
    assert method.graph is not None
    return {k: v.clone() for k, v in method.graph.trunk.state_dict().items()}


def test_stage_two_reuses_the_stage_one_encoder_unchanged() -> None:
    data = toy_set()
    cfg = {**FAST["ntf"], "stage1_epochs": 4, "stage2_epochs": 4}
    full = NTF(**cfg)
    full.fit(data)
    stage1_only = NTF(**{**cfg, "stage2_epochs": 0})
    stage1_only.fit(data)
    untrained = NTF(**{**cfg, "stage1_epochs": 0, "stage2_epochs": 0})
    untrained.fit(data)
    after_both, after_one, initial = trunk_state(full), trunk_state(stage1_only), trunk_state(untrained)
    assert all(torch.equal(after_both[k], after_one[k]) for k in after_both)  # stage 2 did not touch E
    assert any(not torch.equal(after_one[k], initial[k]) for k in after_one)  # stage 1 did train E
    assert full.graph is not None and not any(p.requires_grad for p in full.graph.trunk.parameters())
    # the classifier did learn on top of the frozen encoder
    probs = full.predict_proba(data)
    assert (probs[data.labels == 1][:, None] > probs[data.labels == 0][None, :]).mean() > 0.75


def test_learning_rate_starts_at_the_papers_initial_rate_and_decays_in_each_stage() -> None:
    data = toy_set()
    method = NTF(**{**FAST["ntf"], "stage1_epochs": 5, "stage2_epochs": 5, "lr": 0.1})
    report = method.fit(data)
    for stage in ("natural-trace", "transfer"):
        lrs = [h["lr"] for h in report.history if h["stage"] == stage]
        assert len(lrs) == 5 and lrs[0] == pytest.approx(0.1)
        assert all(b < a for a, b in itertools.pairwise(lrs))  # strictly decreasing
        expected = [0.05 * (1 + np.cos(np.pi * e / 5)) for e in range(5)]  # cosine annealing to 0 over the stage
        assert lrs == pytest.approx(expected)
