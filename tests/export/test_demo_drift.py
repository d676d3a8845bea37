"""The demo's drift stream: known images first, then the unseen family mixed in at its share, every image at most once.

"Images until the alarm" is only meaningful if nothing of the unseen family comes before the onset and the
share after it is the one the demo prints; the pool here is the layout ``make_pool`` writes, with empty files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from export.demo_drift import Scenario, stream_order

FAMILIES = ("autoencoder", "diffusion", "tconv", "upsample-texture")


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    for family in FAMILIES:
        for label in ("0_real", "1_fake"):
            folder = tmp_path / family / label
            folder.mkdir(parents=True)
            for i in range(60):
                (folder / f"{family}-{label[2:]}-{i:05d}.png").write_bytes(b"")
    return tmp_path


def unseen(p: Path, family: str) -> bool:
    return p.parent.parent.name == family and p.parent.name == "1_fake"


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_known_images_until_the_onset_then_the_unseen_family_at_its_share(pool: Path, share: float) -> None:
    sc = Scenario(unseen="tconv", share=share, warmup=200, seed=3)
    order, onset = stream_order(pool, sc)
    assert onset == sc.warmup and len(set(order)) == len(order)
    assert not any(unseen(p, "tconv") for p in order[:onset])
    assert any(p.parent.parent.name == "tconv" and p.parent.name == "0_real" for p in order)  # its real images are known ones
    after = order[onset:]
    new = sum(unseen(p, "tconv") for p in after)
    # the stream stops when either side runs out: all 60 unseen fakes, or all 220 known images left after the warmup
    assert new == 60 or len(after) - new == 7 * 60 - sc.warmup
    assert abs(new / len(after) - share) < 0.1
