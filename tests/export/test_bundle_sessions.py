"""Session options reach every graph of a bundle, not only the backbone and the detector heads."""

from __future__ import annotations

from pathlib import Path

from worker.model.bundle import LoadedBundle
from worker.model.sessions import OnnxModel

KEY = "session.intra_op.allow_spinning"


def _spins(model: OnnxModel) -> bool:
    """What ONNX Runtime itself was told (no entry: its default, which spins)."""
    options = model.session.get_session_options()
    try:
        return options.get_session_config_entry(KEY) != "0"
    except Exception:  # onnxruntime raises when the entry was never set
        return True


def test_spinning_setting_reaches_the_novelty_and_attribution_sessions(monitored_bundle: Path) -> None:
    # A bundle whose drift and attribution graphs spun while the rest slept kept a core busy between batches.
    for spinning in (False, True):
        bundle = LoadedBundle(monitored_bundle, spinning=spinning)
        assert bundle.novelty is not None and bundle.attribution is not None, "the fixture should carry both extra graphs"
        assert len(bundle.sessions) == 1 + len(bundle.heads) + 2
        assert {m.path.name: _spins(m) for m in bundle.sessions} == {m.path.name: spinning for m in bundle.sessions}
