"""Small drawing helpers shared by the synthetic datasets (supersampled PIL drawing)."""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLING = 4
Color = tuple[int, int, int]


class Canvas:
    """A square RGB canvas addressed in unit coordinates (0..1, y down), downsampled when saved.

    Args:
        size: side of the final image in pixels.
        background_top: colour at the top edge.
        background_bottom: colour at the bottom edge (vertical linear gradient in between).
    """

    def __init__(self, size: int, background_top: Color, background_bottom: Color) -> None:
        self.size = size
        self.pixels = size * SUPERSAMPLING
        ramp = np.linspace(0.0, 1.0, self.pixels)[:, None, None]
        gradient = (1 - ramp) * np.asarray(background_top) + ramp * np.asarray(background_bottom)
        array = np.broadcast_to(gradient, (self.pixels, self.pixels, 3)).astype(np.uint8)
        self.image = Image.fromarray(np.ascontiguousarray(array), "RGB")
        self.draw = ImageDraw.Draw(self.image)

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        scale = self.pixels
        return [x0 * scale, y0 * scale, x1 * scale, y1 * scale]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color: Color) -> None:
        """Filled ellipse with centre ``(cx, cy)`` and radii ``(rx, ry)``."""
        self.draw.ellipse(self._box(cx - rx, cy - ry, cx + rx, cy + ry), fill=color)

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, color: Color, radius: float = 0) -> None:
        """Filled (optionally rounded) rectangle."""
        self.draw.rounded_rectangle(self._box(x0, y0, x1, y1), radius=radius * self.pixels, fill=color)

    def chord(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float, color: Color) -> None:
        """Filled chord of an ellipse between two angles in degrees (0 = right, clockwise)."""
        self.draw.chord(self._box(cx - rx, cy - ry, cx + rx, cy + ry), start, end, fill=color)

    def polygon(self, points: Sequence[tuple[float, float]], color: Color) -> None:
        """Filled polygon."""
        self.draw.polygon([(x * self.pixels, y * self.pixels) for x, y in points], fill=color)

    def line(self, points: Sequence[tuple[float, float]], width: float, color: Color) -> None:
        """Thick polyline, ``width`` in unit coordinates."""
        scaled = [(x * self.pixels, y * self.pixels) for x, y in points]
        self.draw.line(scaled, fill=color, width=max(1, round(width * self.pixels)), joint="curve")

    def save(self, path: Path, mirror: bool = False) -> None:
        """Downsamples (box filter) and writes a PNG, optionally mirrored left-right."""
        image = self.image.resize((self.size, self.size), Image.Resampling.BOX)
        if mirror:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(path, format="PNG")


def random_color(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> Color:
    """A colour of random hue with saturation and value drawn from the given ranges."""
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return round(red * 255), round(green * 255), round(blue * 255)


def jitter(rng: np.random.Generator, color: Color, amount: int) -> Color:
    """A colour with each channel shifted by up to ``amount``."""
    shifted = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return int(shifted[0]), int(shifted[1]), int(shifted[2])


def scale_color(color: Color, factor: float) -> Color:
    """A colour with every channel multiplied by ``factor`` (clipped)."""
    return tuple(int(min(255, channel * factor)) for channel in color)  # type: ignore[return-value]


def render_in_parallel(render_one: Callable[[int], None], count: int, workers: int = 2) -> None:
    """Calls ``render_one(i)`` for ``i`` in ``range(count)`` on up to ``workers`` processes."""
    if workers <= 1 or count < 2000:
        for index in range(count):
            render_one(index)
        return
    chunks = [range(start, min(start + 1000, count)) for start in range(0, count, 1000)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_render_chunk, [render_one] * len(chunks), chunks))


def _render_chunk(render_one: Callable[[int], None], indices: range) -> None:
    for index in indices:
        render_one(index)
