"""Generator attribution as it rides in a verdict: which family an image resembles, or ``unknown``.

Lives in its own module so that :mod:`schemas.events` can import it without
the event models growing another section of their own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

UNKNOWN_FAMILY = "unknown"


class Attribution(BaseModel):
    """The attribution head's answer for one image (absent when the bundle has no attribution head).

    ``family`` is the most probable class (a generator family seen in training,
    or ``real``), or ``unknown`` when that probability is below ``threshold``:
    a family never seen in training should not be forced onto a known one.
    It never changes the label or the score.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field(min_length=1, description="Most probable family, 'real', or 'unknown' below the threshold.")
    probability: float = Field(ge=0.0, le=1.0, description="Probability of the most probable class.")
    probabilities: dict[str, float] = Field(description="Probability of every class the head knows (sums to 1).")
    threshold: float = Field(ge=0.0, le=1.0, description="Top probability below which the family is 'unknown' (calibrated on validation).")

    @classmethod
    def from_probabilities(cls, probabilities: dict[str, float], threshold: float) -> Attribution:
        """Pick the top class, or ``unknown`` below the threshold."""
        if not probabilities:
            raise ValueError("no attribution probabilities")
        top = max(probabilities, key=lambda k: probabilities[k])
        p = min(1.0, max(0.0, float(probabilities[top])))
        clean = {k: min(1.0, max(0.0, float(v))) for k, v in probabilities.items()}
        return cls(family=top if p >= threshold else UNKNOWN_FAMILY, probability=p, probabilities=clean, threshold=threshold)


__all__ = ["UNKNOWN_FAMILY", "Attribution"]
