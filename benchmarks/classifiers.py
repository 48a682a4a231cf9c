r"""Attribute classifiers side by side: accuracy per attribute on a setup's split, agreement on generated images.

Any classifier the framework loads (a trained one, a zero-shot CLIP spec or folder) is scored on the images of the
setup's ``dataset`` split (``--split``, default ``test``), for every attribute it shares with the data; then every
pair of classifiers is compared on ``--generate`` images of the setup's backbone sampled by
``configs/methods/plain.yaml`` (``--steps`` DDIM steps, ``--seed``): the share of images they label alike, per
shared attribute.

Run from the repository root::

    python benchmarks/classifiers.py --setup configs/setups/synthetic_faces_sd.yaml \
        --classifiers synthetic_faces_classifier,synthetic_faces_clip --generate 512 --steps 25 --seed 0

Prints Markdown tables; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lightning_fair.classifiers import load_classifier
from lightning_fair.cli import build_cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def accuracies(classifier, data, split: str, batch_size: int = 256) -> dict[str, float]:
    """Accuracy of each attribute the classifier shares with the data, on the split's images."""
    dataset = data.dataset(split)
    shared = [name for name in classifier.attributes if name in data.attributes]
    correct = dict.fromkeys(shared, 0)
    with torch.no_grad(), classifier.inputs_from(data.center_crop_fraction, f"the images of '{data.root}'"):
        for batch in DataLoader(dataset, batch_size=batch_size):
            probabilities = classifier.predict_proba(batch["image"])
            for name in shared:
                labels = batch["attributes"][:, data.attributes.index(name)]
                correct[name] += int((probabilities[name].argmax(dim=1) == labels).sum())
    return {name: count / len(dataset) for name, count in correct.items()}


def main() -> None:
    """Parses the options, scores the classifiers, prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", required=True)
    parser.add_argument("--classifiers", required=True, help="comma-separated references")
    parser.add_argument("--split", default="test")
    parser.add_argument("--attributes", default=None, help="comma-separated data attributes (default: the setup's)")
    parser.add_argument("--generate", type=int, default=512, help="generated images for the agreement (0: none)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    references = args.classifiers.split(",")
    classifiers = {reference: load_classifier(reference, "--classifiers") for reference in references}
    plain = REPO_ROOT / "configs" / "methods" / "plain.yaml"
    options = [f"--model.init_args.sampler.num_inference_steps={args.steps}", f"--model.init_args.seed={args.seed}"]
    if args.attributes:
        options.append(f"--dataset.init_args.attributes=[{args.attributes}]")
    cli = build_cli(["-c", args.setup, "-c", str(plain), *options], run=False)
    data = cli.datamodule.train_data
    data.prepare_data()
    data.setup("test")
    results = {"accuracy": {ref: accuracies(c, data, args.split) for ref, c in classifiers.items()}}
    attributes = list(dict.fromkeys(name for scores in results["accuracy"].values() for name in scores))
    print(f"Accuracy on the {args.split} split of '{data.root}':\n")
    print("| classifier | " + " | ".join(attributes) + " |\n|---|" + "---|" * len(attributes))
    for reference, scores in results["accuracy"].items():
        print(f"| {reference} | " + " | ".join(f"{scores.get(name, float('nan')):.3f}" for name in attributes) + " |")
    if args.generate:
        model = cli.model
        images = torch.cat(
            [
                model.sample(torch.arange(start, min(start + 128, args.generate)))[0]
                for start in range(0, args.generate, 128)
            ]
        )
        labels = {}
        with torch.no_grad():
            for reference, classifier in classifiers.items():
                classifier.expect_generated(model)
                labels[reference] = {name: p.argmax(dim=1) for name, p in classifier.predict_proba(images).items()}
        results["agreement"] = {}
        print(f"\nAgreement on {args.generate} images of '{model.backbone_reference}' (plain, {args.steps} steps):\n")
        print("| classifiers | attribute | agreement | shares of class 1 |\n|---|---|---|---|")
        for first, second in itertools.combinations(references, 2):
            for name in [n for n in labels[first] if n in labels[second]]:
                agreement = float((labels[first][name] == labels[second][name]).float().mean())
                shares = [float(labels[ref][name].float().mean()) for ref in (first, second)]
                results["agreement"][f"{first} | {second} | {name}"] = {"agreement": agreement, "shares": shares}
                print(f"| {first} / {second} | {name} | {agreement:.3f} | {shares[0]:.3f} / {shares[1]:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
