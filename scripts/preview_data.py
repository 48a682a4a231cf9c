"""A setup's images as its models see them: a grid of one split after the crop and resize, and what was done to them.

Check a dataset of your own before training anything on it (see the README, "Your own model and data")::

    python scripts/preview_data.py configs/setups/shapes.yaml runs/preview.png
    python scripts/preview_data.py my_setup.yaml runs/preview.png --dataset.init_args.center_crop 140

Writes ``OUT`` (the first ``--num-images`` images of ``--split``, without the train split's random flips) and prints
the source images' size, the crop, the view the classifier and backbone record (``center_crop_fraction``), the
model's image size and the split's group counts. Options after the two paths override the setup's ``dataset``
(``--dataset.init_args.<option> VALUE``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from omegaconf import OmegaConf
from PIL import Image
from torchvision.utils import save_image

import lightning_fair.data  # noqa: F401  (the DataModules' short names in configs)
from lightning_fair.data.base import AttributeDataModule


def load_dataset(setup: Path, overrides: list[str]) -> AttributeDataModule:
    """The setup's ``dataset``, with command-line overrides of its options."""
    config = OmegaConf.load(setup)
    if "dataset" not in config:
        raise SystemExit(f"{setup}: no 'dataset' to preview")
    parser = ArgumentParser()
    parser.add_subclass_arguments(AttributeDataModule, "dataset")
    parsed = parser.parse_args(["--dataset", str(OmegaConf.to_container(config.dataset, resolve=True)), *overrides])
    return parser.instantiate(parsed).dataset


def main(arguments: list[str] | None = None) -> str:
    """Writes the preview and returns the description it prints."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("setup", type=Path, help="a setup config (its 'dataset' is previewed)")
    cli.add_argument("out", type=Path, help="the PNG grid to write")
    cli.add_argument("--split", default="train", choices=["train", "val", "test"])
    cli.add_argument("--num-images", type=int, default=64)
    options, overrides = cli.parse_known_args(arguments)
    data = load_dataset(options.setup, overrides)
    data.prepare_data()
    dataset = data.dataset(options.split)
    view = data.transform(train=False)  # the split's transform without random flips
    count = min(options.num_images, len(dataset))
    images = torch.stack([view(Image.open(dataset.image_paths[item]).convert("RGB")) for item in range(count)])
    options.out.parent.mkdir(parents=True, exist_ok=True)
    save_image((images + 1) / 2, options.out, nrow=8)
    with Image.open(dataset.image_paths[0]) as first:
        source = f"{first.size[0]}x{first.size[1]}"
    crop = "none (the centred square of the shorter side)" if data.center_crop is None else f"{data.center_crop} px"
    lines = [
        f"{count} {options.split} images of {data.root} as the models see them: {options.out}",
        f"source images {source}, center_crop {crop}, center_crop_fraction {data.center_crop_fraction:.3f}, "
        f"resized to {data.image_size}x{data.image_size}",
        data.describe(options.split),
    ]
    description = "\n".join(lines)
    print(description)
    return description


if __name__ == "__main__":
    main()
