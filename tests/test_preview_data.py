"""``scripts/preview_data.py``: a setup's images as its models see them, and what was done to them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_preview_shows_the_crop_the_models_see(faces_root: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("preview_data", REPO_ROOT / "scripts" / "preview_data.py")
    preview = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preview)
    setup = tmp_path / "setup.yaml"
    dataset = {"root": str(faces_root), "attributes": ["Male"], "sensitive": "Male", "image_size": 16}
    setup.write_text(yaml.safe_dump({"dataset": {"class_path": "CelebADataModule", "init_args": dataset}}))
    with Image.open(next((faces_root / "img_align_celeba").iterdir())) as first:
        width, height = first.size
    crop = min(width, height) // 2
    out = tmp_path / "preview.png"
    text = preview.main([str(setup), str(out), "--num-images", "10", f"--dataset.init_args.center_crop={crop}"])
    with Image.open(out) as grid:
        assert grid.size == (2 + 8 * 18, 2 + 2 * 18)  # 10 images of 16 px: 8 per row, 2-px padding
    assert f"source images {width}x{height}, center_crop {crop} px" in text
    assert f"center_crop_fraction {crop / min(width, height):.3f}, resized to 16x16" in text
    assert "CelebADataModule 'train' split: 240 images" in text
