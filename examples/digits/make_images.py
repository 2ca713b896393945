"""Write examples/digits/images/digit_<label>.png: one 28x28 test image per digit.

Each image is the first sample of its label in the test split of
``load_digits_split(seed=0)``, the split the ``digits-cnn`` recipe evaluates on, so a
model trained with the defaults has never seen them.

Run from the repository root:  python examples/digits/make_images.py
"""

from __future__ import annotations

from pathlib import Path

from modelhost.train.data import NUM_CLASSES, load_digits_split, save_png

IMAGES_DIR = Path(__file__).resolve().parent / "images"


def make_images(out_dir: Path = IMAGES_DIR) -> list[Path]:
    """Write one PNG per label 0..9 into ``out_dir`` and return their paths."""
    split = load_digits_split(seed=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for label in range(NUM_CLASSES):
        first = int((split.y_test == label).nonzero()[0][0])
        path = out_dir / f"digit_{label}.png"
        save_png(split.x_test[first], path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in make_images():
        print(written)
