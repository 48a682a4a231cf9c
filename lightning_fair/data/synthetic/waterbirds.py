"""SyntheticWaterbirds: two bird shapes on land or water, written in the Waterbirds on-disk format."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from lightning_fair.data.synthetic.base import SyntheticDataset
from lightning_fair.data.synthetic.render import Canvas, jitter, render_in_parallel
from lightning_fair.data.waterbirds import METADATA_FILE

LANDBIRD_COLORS = [(196, 60, 40), (230, 150, 30), (220, 200, 40), (130, 80, 40), (90, 110, 40)]
WATERBIRD_COLORS = [(245, 245, 245), (190, 190, 200), (40, 40, 45), (120, 120, 130)]
BIRD_FOLDERS = ("landbird", "waterbird")
PLACE_FOLDERS = ("land", "water")


class SyntheticWaterbirds(SyntheticDataset):
    """Birds on backgrounds in the Waterbirds format, with the benchmark's spurious correlation.

    ``y`` is the bird (0 landbird: round upright body, short beak, legs, warm colours; 1 waterbird: long
    flat body, long neck and beak, white/grey/black) and ``place`` the background (0 land: green or brown
    ground with trees; 1 water: blue water with waves). In the train split ``place`` equals ``y`` with
    probability ``correlation`` (0.95 as in Waterbirds); in val and test ``y`` and ``place`` are
    independent and balanced, so every (y, place) group has a quarter of the images.

    Args:
        num_images: number of images over all splits.
        image_size: side of the images in pixels.
        seed: seed of everything random.
        waterbird_probability: P(y = 1) in the train split.
        correlation: P(place = y) in the train split.
        split_fractions: fractions of train, val and test images.
    """

    format = "waterbirds"

    def __init__(
        self,
        num_images: int = 12000,
        image_size: int = 32,
        seed: int = 0,
        waterbird_probability: float = 0.25,
        correlation: float = 0.95,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    ) -> None:
        super().__init__(num_images, image_size, seed, split_fractions)
        for name, value in [("waterbird_probability", waterbird_probability), ("correlation", correlation)]:
            if not 0 <= value <= 1:
                raise ValueError(f"Option '{name}' must be a probability in [0, 1], got {value}")
        self.waterbird_probability = float(waterbird_probability)
        self.correlation = float(correlation)

    def sample_labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draws ``y``, ``place`` and the split of every image."""
        rng = np.random.default_rng(self.seed)
        splits = np.repeat(np.arange(3), self.split_sizes())
        train = splits == 0
        bird = rng.random(self.num_images) < np.where(train, self.waterbird_probability, 0.5)
        same_place = rng.random(self.num_images) < self.correlation
        place = np.where(train, np.where(same_place, bird, ~bird), rng.random(self.num_images) < 0.5)
        return bird.astype(np.int64), place.astype(np.int64), splits

    def _write_files(self, folder: Path) -> None:
        birds, places, splits = self.sample_labels()
        names = [f"{BIRD_FOLDERS[bird]}/{index + 1:06d}.png" for index, bird in enumerate(birds)]
        for name in BIRD_FOLDERS:
            (folder / name).mkdir()
        render_in_parallel(
            partial(_render_bird, folder, names, birds, places, self.image_size, self.seed), self.num_images
        )
        with (folder / METADATA_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
            for index, (name, bird, place, split) in enumerate(zip(names, birds, places, splits, strict=True)):
                place_file = f"/{PLACE_FOLDERS[place][0]}/{PLACE_FOLDERS[place]}/{index + 1:08d}.png"
                writer.writerow([index + 1, name, bird, split, place, place_file])


def _render_bird(
    folder: Path,
    names: list[str],
    birds: np.ndarray,
    places: np.ndarray,
    image_size: int,
    seed: int,
    index: int,
) -> None:
    """Draws image ``index``; nuisance factors depend only on ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    sky = jitter(rng, (170, 205, 235), 25)
    horizon = rng.uniform(0.45, 0.6)
    if places[index] == 0:
        ground = jitter(rng, [(70, 140, 50), (120, 100, 50), (90, 120, 40)][rng.integers(3)], 20)
        canvas = Canvas(image_size, sky, sky)
        canvas.rectangle(0, horizon, 1, 1, ground)
        for _ in range(rng.integers(1, 4)):
            tx, size = rng.uniform(0.05, 0.95), rng.uniform(0.08, 0.14)
            canvas.rectangle(tx - 0.02, horizon - size, tx + 0.02, horizon + 0.02, (90, 60, 30))
            canvas.ellipse(tx, horizon - size * 1.4, size, size * 1.1, jitter(rng, (30, 100, 35), 20))
    else:
        water = jitter(rng, (40, 90, 170), 25)
        canvas = Canvas(image_size, sky, sky)
        canvas.rectangle(0, horizon, 1, 1, water)
        for _ in range(rng.integers(2, 5)):
            wy, wx = rng.uniform(horizon + 0.05, 0.95), rng.uniform(0.0, 0.8)
            canvas.rectangle(wx, wy, wx + rng.uniform(0.15, 0.3), wy + 0.025, jitter(rng, (120, 170, 220), 15))

    size = rng.uniform(0.85, 1.15)
    cx, cy = 0.5 + rng.uniform(-0.1, 0.1), 0.55 + rng.uniform(-0.08, 0.08)
    if birds[index] == 0:
        color = jitter(rng, LANDBIRD_COLORS[rng.integers(len(LANDBIRD_COLORS))], 15)
        canvas.line([(cx - 0.04 * size, cy + 0.1 * size), (cx - 0.05 * size, cy + 0.2 * size)], 0.02, (60, 40, 20))
        canvas.line([(cx + 0.04 * size, cy + 0.1 * size), (cx + 0.05 * size, cy + 0.2 * size)], 0.02, (60, 40, 20))
        canvas.ellipse(cx, cy, 0.12 * size, 0.13 * size, color)
        canvas.ellipse(cx + 0.08 * size, cy - 0.15 * size, 0.075 * size, 0.075 * size, color)
        head_x, head_y = cx + 0.15 * size, cy - 0.16 * size
        canvas.polygon(
            [
                (head_x, head_y - 0.03 * size),
                (head_x + 0.08 * size, head_y + 0.005 * size),
                (head_x, head_y + 0.03 * size),
            ],
            (240, 170, 30),
        )
        canvas.ellipse(cx + 0.1 * size, cy - 0.17 * size, 0.018 * size, 0.018 * size, (10, 10, 10))
    else:
        color = jitter(rng, WATERBIRD_COLORS[rng.integers(len(WATERBIRD_COLORS))], 10)
        canvas.ellipse(cx, cy, 0.22 * size, 0.08 * size, color)
        neck_top = (cx + 0.2 * size, cy - 0.26 * size)
        canvas.line(
            [(cx + 0.14 * size, cy - 0.02 * size), (cx + 0.22 * size, cy - 0.12 * size), neck_top],
            0.05 * size,
            color,
        )
        canvas.ellipse(neck_top[0], neck_top[1], 0.05 * size, 0.045 * size, color)
        canvas.polygon(
            [
                (neck_top[0] + 0.03 * size, neck_top[1] - 0.015 * size),
                (neck_top[0] + 0.2 * size, neck_top[1] + 0.02 * size),
                (neck_top[0] + 0.03 * size, neck_top[1] + 0.02 * size),
            ],
            (235, 140, 30),
        )
    canvas.save(folder / names[index], mirror=bool(rng.random() < 0.5))
