"""Writes a small biased image dataset in the generic CSV format: coloured shapes on textured backgrounds.

Each 32x32 image shows one shape, a disc or a square, in a warm (red to orange) or a cool (blue to teal) colour,
of random size, position and shade, on a noisy background of random brightness. Attributes (integer columns of
``labels.csv``): ``warm`` (1 warm, 0 cool) and ``square`` (1 square, 0 disc). The train split is biased: 80% warm,
squares mostly warm (P(square | warm) 0.7, P(square | cool) 0.3); val and test are balanced over the four
(warm, square) groups, so that the test split is a fair reference for image quality.

    python scripts/shapes_csv.py data/shapes                 # 6,000 train, 1,000 val, 1,000 test images
    python scripts/shapes_csv.py data/shapes --train 400 --val 80 --test 80
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SUPERSAMPLING = 4  # shapes are drawn at 4x and scaled down, for smooth edges
WARM_SHARE = 0.8
SQUARE_GIVEN_WARM = {1: 0.7, 0: 0.3}


def draw_image(rng: np.random.Generator, warm: int, square: int) -> Image.Image:
    """One image of the given attributes, its other factors (colour, size, place, background) drawn from ``rng``."""
    big = SIZE * SUPERSAMPLING
    brightness = rng.uniform(0.35, 0.85)
    tint = rng.uniform(-0.08, 0.08, size=3)
    background = np.clip(brightness + tint + rng.normal(0, 0.05, size=(SIZE, SIZE, 3)), 0, 1)
    canvas = Image.fromarray((background * 255).astype(np.uint8)).resize((big, big), Image.Resampling.BILINEAR)
    hue = rng.uniform(0.0, 0.1) if warm else rng.uniform(0.5, 0.62)  # red..orange or blue..teal
    colour = hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    radius = rng.uniform(0.2, 0.34) * big
    cx, cy = rng.uniform(radius, big - radius, size=2)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(canvas)
    if square:
        draw.rectangle(box, fill=colour)
    else:
        draw.ellipse(box, fill=colour)
    return canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    """An 8-bit RGB colour from HSV components in [0, 1]."""
    colour = Image.new("HSV", (1, 1), (int(hue * 255), int(saturation * 255), int(value * 255))).convert("RGB")
    return colour.getpixel((0, 0))


def split_labels(rng: np.random.Generator, count: int, balanced: bool) -> list[tuple[int, int]]:
    """``(warm, square)`` of ``count`` images: the biased train distribution, or the four groups in equal shares."""
    if balanced:
        groups = [(warm, square) for warm in (0, 1) for square in (0, 1)]
        return [groups[i % 4] for i in rng.permutation(count)]
    warm = (rng.random(count) < WARM_SHARE).astype(int)
    square = (rng.random(count) < np.where(warm == 1, SQUARE_GIVEN_WARM[1], SQUARE_GIVEN_WARM[0])).astype(int)
    return list(zip(warm.tolist(), square.tolist(), strict=True))


def write_dataset(root: Path, train: int, val: int, test: int, seed: int = 0) -> None:
    """Writes ``images/*.png`` and ``labels.csv`` (columns ``file``, ``partition``, ``warm``, ``square``)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for partition, count, balanced in (("train", train, False), ("val", val, True), ("test", test, True)):
        for warm, square in split_labels(rng, count, balanced):
            name = f"images/{len(rows):06d}.png"
            draw_image(rng, warm, square).save(root / name)
            rows.append((name, partition, warm, square))
    temporary = root / "labels.csv.partial"
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "partition", "warm", "square"])
        writer.writerows(rows)
    temporary.replace(root / "labels.csv")  # the labels appear last, once every image is written


def main() -> None:
    """Parses the command line and writes the dataset."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the dataset folder to write")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    write_dataset(options.root, options.train, options.val, options.test, options.seed)
    print(f"wrote {options.train + options.val + options.test} images and labels.csv to {options.root}")


if __name__ == "__main__":
    main()
