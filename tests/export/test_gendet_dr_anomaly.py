"""GenDet-DR's anomaly-aware term: it pulls the real images' codes into a tight cluster in the autoencoder's latent space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.heads.gendet_dr import GenDetDRConfig, real_compactness, train_autoencoder


def test_real_compactness_is_the_real_spread_relative_to_all_codes() -> None:
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(real_compactness(z, y)) == 0.0  # identical real codes: a point
    z2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert float(real_compactness(z2, y)) == pytest.approx(1.0)  # reals spread as much as everything
    z3 = torch.randn(20, 5)
    y3 = torch.arange(20) % 2
    assert float(real_compactness(10.0 * z3, y3)) == pytest.approx(float(real_compactness(z3, y3)), rel=1e-5)  # scaling the codes changes nothing
    assert float(real_compactness(z3, torch.ones(20, dtype=torch.long))) == 0.0  # no real rows: no term


def codes_spread(weight: float) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    n, dim = 256, 24
    y = np.arange(n) % 2
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[y == 1, :4] += 2.0  # fakes differ in a few directions; the reals are as spread as the fakes
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    cfg = GenDetDRConfig(code_dim=6, ae_hidden=32, ae_epochs=40, batch_size=64, anomaly_weight=weight)
    history: list[dict] = []
    ae, _ = train_autoencoder(xt, yt, None, cfg, history)
    with torch.no_grad():
        z = ae.encoder(xt)
        recon = float(((ae.decoder(z) - xt) ** 2).mean())
    return float(real_compactness(z, yt)), recon


def test_anomaly_term_tightens_the_real_cluster_against_weight_zero() -> None:
    without, recon0 = codes_spread(0.0)
    default, _ = codes_spread(GenDetDRConfig().anomaly_weight)
    strong, recon_strong = codes_spread(1.0)
    assert default < without - 0.02, (default, without)
    assert strong < default
    assert recon_strong < 1.0 and recon0 < 1.0  # still an autoencoder: reconstructs better than predicting the mean (MSE 1)
