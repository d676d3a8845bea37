"""Real photographs that installed packages ship (no download): scikit-image's sample data.

These are the only real camera images available offline here. The demo
publishes them, the preprocessing parity test runs on them, and the synthetic
benchmark crops and augments them into its "real" class.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

#: scikit-image sample files that are photographs (colour first, then greyscale).
COLOUR = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "ihc.png",
)
GREY = ("camera.png", "moon.png", "coins.png", "grass.png", "gravel.png", "brick.png", "page.png", "text.png", "clock_motion.png")


def data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def photo_paths(include_grey: bool = True) -> list[Path]:
    """Paths of the sample photographs present in this install, colour first."""
    names = COLOUR + (GREY if include_grey else ())
    return [p for p in (data_dir() / n for n in names) if p.is_file()]


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")
