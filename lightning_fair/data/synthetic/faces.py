"""SyntheticFaces: cartoon faces with CelebA-like bias, written in the CelebA on-disk format."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from lightning_fair.data.celeba import ATTRIBUTE_FILE, CELEBA_ATTRIBUTES, IMAGE_FOLDER, PARTITION_FILE
from lightning_fair.data.synthetic.base import SyntheticDataset
from lightning_fair.data.synthetic.render import Canvas, jitter, random_color, render_in_parallel, scale_color
from lightning_fair.utils.options import check_ranges

HAIR_COLORS = {"Blond_Hair": (232, 196, 84), "Brown_Hair": (92, 50, 20), "Black_Hair": (34, 28, 26)}
SKIN_DARK, SKIN_LIGHT = np.array([150, 100, 70]), np.array([250, 218, 192])
PALE_SKIN_THRESHOLD = 0.8


class SyntheticFaces(SyntheticDataset):
    """Cartoon faces in the CelebA format (all 40 attribute columns), with a controllable CelebA-like bias.

    Every rendered attribute is a solid shape or colour that a blurry or noisy sample still shows:

    - ``Male``: short hair cap and a solid beard over the lower face; otherwise long hair down to the
      shoulders (``No_Beard`` is its complement). A shape, formed late in denoising.
    - ``Blond_Hair`` / ``Brown_Hair`` / ``Black_Hair``: the hair colour. A coarse colour, formed early.
    - ``Eyeglasses``: dark filled lenses with a bridge.
    - ``Smiling`` (and ``Mouth_Slightly_Open``): a wide open dark-red mouth instead of a short closed one.
    - ``Bangs``: a fringe of hair over the forehead. ``Pale_Skin``: the lightest fifth of skin tones.

    Nuisance variation: skin tone, face size and position, mirroring, shirt colour, background gradient.
    The other CelebA columns are written as -1. The train split is biased: few ``Male``, and
    ``Blond_Hair`` far more frequent without ``Male``. The val and test splits are balanced (every rendered
    binary attribute independent with probability 0.5, ``Bangs`` and ``Pale_Skin`` as in train) so they
    serve as the balanced reference set.

    Args:
        num_images: number of images over all splits.
        image_size: side of the images in pixels.
        seed: seed of everything random.
        male_probability: P(Male) in the train split.
        blond_probability_female: P(Blond_Hair | not Male) in the train split.
        blond_probability_male: P(Blond_Hair | Male) in the train split.
        eyeglasses_probability: P(Eyeglasses) in the train split.
        smiling_probability: P(Smiling) in the train split.
        bangs_probability: P(Bangs) in every split.
        split_fractions: fractions of train, val and test images (written in this order).
    """

    format = "celeba"

    def __init__(
        self,
        num_images: int = 20000,
        image_size: int = 32,
        seed: int = 0,
        male_probability: float = 0.25,
        blond_probability_female: float = 0.45,
        blond_probability_male: float = 0.05,
        eyeglasses_probability: float = 0.2,
        smiling_probability: float = 0.5,
        bangs_probability: float = 0.3,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    ) -> None:
        super().__init__(num_images, image_size, seed, split_fractions)
        probabilities = {
            "male_probability": male_probability,
            "blond_probability_female": blond_probability_female,
            "blond_probability_male": blond_probability_male,
            "eyeglasses_probability": eyeglasses_probability,
            "smiling_probability": smiling_probability,
            "bangs_probability": bangs_probability,
        }
        check_ranges(probability=probabilities)
        for name, value in probabilities.items():
            setattr(self, name, float(value))

    def sample_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Draws the labels of every image.

        Returns:
            Labels in {-1, 1}, shape ``(N, 40)`` in CelebA column order, and the split of each image.
        """
        rng = np.random.default_rng(self.seed)
        sizes = self.split_sizes()
        splits = np.repeat(np.arange(3), sizes)
        biased = splits == 0
        count = self.num_images

        def draw(train_probability: float | np.ndarray, eval_probability: float) -> np.ndarray:
            return rng.random(count) < np.where(biased, train_probability, eval_probability)

        male = draw(self.male_probability, 0.5)
        blond_probability = np.where(male, self.blond_probability_male, self.blond_probability_female)
        blond = draw(blond_probability, 0.5)
        black = ~blond & (rng.random(count) < 0.5)
        skin_tone = rng.random(count)
        values = {
            "Male": male,
            "No_Beard": ~male,
            "Blond_Hair": blond,
            "Black_Hair": black,
            "Brown_Hair": ~blond & ~black,
            "Eyeglasses": draw(self.eyeglasses_probability, 0.5),
            "Smiling": draw(self.smiling_probability, 0.5),
            "Bangs": draw(self.bangs_probability, self.bangs_probability),
            "Pale_Skin": skin_tone > PALE_SKIN_THRESHOLD,
        }
        values["Mouth_Slightly_Open"] = values["Smiling"]
        labels = -np.ones((count, len(CELEBA_ATTRIBUTES)), dtype=np.int64)
        for name, column in values.items():
            labels[:, CELEBA_ATTRIBUTES.index(name)] = np.where(column, 1, -1)
        self._skin_tone = skin_tone
        return labels, splits

    def _write_files(self, folder: Path) -> None:
        labels, splits = self.sample_labels()
        names = [f"{index + 1:06d}.png" for index in range(self.num_images)]
        (folder / IMAGE_FOLDER).mkdir()
        render_in_parallel(
            partial(
                _render_face,
                folder / IMAGE_FOLDER,
                names,
                labels,
                self._skin_tone,
                self.image_size,
                self.seed,
            ),
            self.num_images,
        )
        rows = [name + " " + " ".join(f"{value:2d}" for value in row) for name, row in zip(names, labels, strict=True)]
        header = [str(self.num_images), " ".join(CELEBA_ATTRIBUTES) + " "]
        (folder / ATTRIBUTE_FILE).write_text("\n".join(header + rows) + "\n")
        (folder / PARTITION_FILE).write_text(
            "".join(f"{name} {split}\n" for name, split in zip(names, splits, strict=True))
        )


def _render_face(
    folder: Path,
    names: list[str],
    labels: np.ndarray,
    skin_tones: np.ndarray,
    image_size: int,
    seed: int,
    index: int,
) -> None:
    """Draws face ``index``; nuisance factors depend only on ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    row = {name: labels[index, column] == 1 for column, name in enumerate(CELEBA_ATTRIBUTES)}
    hair_name = next(name for name in HAIR_COLORS if row[name])
    hair = jitter(rng, HAIR_COLORS[hair_name], 14)
    skin_level = skin_tones[index]
    skin = jitter(rng, tuple(int(c) for c in SKIN_DARK + skin_level * (SKIN_LIGHT - SKIN_DARK)), 6)
    top = random_color(rng, (0.15, 0.55), (0.45, 0.95))
    canvas = Canvas(image_size, top, jitter(rng, scale_color(top, 0.8), 20))

    size = rng.uniform(0.88, 1.08)
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.47 + rng.uniform(-0.04, 0.04)
    face_rx, face_ry = 0.19 * size, 0.245 * size
    if not row["Male"]:
        canvas.rectangle(cx - 0.29 * size, cy - 0.3 * size, cx + 0.29 * size, cy + 0.42 * size, hair, 0.12 * size)
    shirt = random_color(rng, (0.3, 0.8), (0.3, 0.9))
    canvas.ellipse(cx, cy + 0.55 * size, 0.36 * size, 0.25 * size, shirt)
    canvas.rectangle(cx - 0.07 * size, cy + 0.15 * size, cx + 0.07 * size, cy + 0.34 * size, skin)
    if row["Male"]:
        canvas.ellipse(cx, cy - 0.1 * size, face_rx + 0.02 * size, face_ry * 0.78, hair)
    canvas.ellipse(cx, cy, face_rx, face_ry, skin)
    if row["Male"]:
        beard = scale_color(hair, 0.75)
        canvas.chord(cx, cy, face_rx, face_ry, 10, 170, beard)
        canvas.rectangle(cx - 0.09 * size, cy + 0.06 * size, cx + 0.09 * size, cy + 0.1 * size, beard)
    if row["Bangs"]:
        canvas.chord(cx, cy - 0.16 * size, face_rx * 0.98, 0.11 * size, 180, 360, hair)
        canvas.rectangle(cx - face_rx * 0.9, cy - 0.17 * size, cx + face_rx * 0.9, cy - 0.12 * size, hair)

    eye_y, eye_dx = cy - 0.03 * size, 0.075 * size
    for side in (-1, 1):
        canvas.ellipse(cx + side * eye_dx, eye_y, 0.024 * size, 0.02 * size, (40, 30, 30))
    if row["Eyeglasses"]:
        lens = jitter(rng, (22, 22, 28), 8)
        for side in (-1, 1):
            lx = cx + side * eye_dx
            canvas.rectangle(
                lx - 0.06 * size,
                eye_y - 0.045 * size,
                lx + 0.06 * size,
                eye_y + 0.045 * size,
                lens,
                0.02 * size,
            )
        canvas.rectangle(cx - 0.03 * size, eye_y - 0.015 * size, cx + 0.03 * size, eye_y + 0.005 * size, lens)

    mouth_y = cy + 0.12 * size
    if row["Smiling"]:
        canvas.chord(cx, mouth_y - 0.03 * size, 0.1 * size, 0.075 * size, 0, 180, (140, 24, 36))
        canvas.rectangle(
            cx - 0.08 * size, mouth_y - 0.03 * size, cx + 0.08 * size, mouth_y - 0.01 * size, (245, 245, 240)
        )
    else:
        canvas.rectangle(
            cx - 0.05 * size, mouth_y - 0.012 * size, cx + 0.05 * size, mouth_y + 0.012 * size, (150, 62, 62)
        )
    canvas.save(folder / names[index], mirror=bool(rng.random() < 0.5))
