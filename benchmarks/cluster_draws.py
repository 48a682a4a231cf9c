r"""Self-Guidance's cluster draws without labels: what each one carries of the data's attributes, per K.

Extracts the features of a setup's train split as ``configs/methods/self_guidance.yaml`` does (with ``--override``
options of that config), then for each ``--clusters`` K fits k-means and, once, the density modes, and prints per
(K, draw) the attribute shares the draw carries: the mean of the clusters' member shares under the draw's weights.
Draws: ``data`` (the clusters' frequencies), ``uniform`` (the paper's) and ``modes`` (uniform over the density modes,
then over each mode's images). The labels are read only to report; the FD is that of the setup's sensitive attribute
against the uniform distribution, the FD a model that followed its clusters exactly would reach.

Run from the repository root::

    python benchmarks/cluster_draws.py --setup configs/setups/synthetic_faces.yaml --clusters 2,4,8,16,32,64

Prints a Markdown table and the modes' composition; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_fair.cli import build_cli
from lightning_fair.data.keyed_rows import sharded_pass
from lightning_fair.methods.self_guidance.annotation import CLUSTERS
from lightning_fair.methods.self_guidance.clusters import (
    cluster_composition,
    cluster_frequencies,
    cluster_report,
    find_modes,
    fit_clusters,
    mode_balanced_weights,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def carried_shares(weights: torch.Tensor, assignments: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """The share of label 1 that a draw of clusters with ``weights`` carries."""
    return float(weights @ cluster_composition(assignments, labels, k, 2)[:, 1])


def main(argv: list[str] | None = None) -> dict:
    """Parses the options, extracts the features, prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", required=True)
    parser.add_argument("--clusters", default="2,4,8,16,32,64", help="comma-separated K values")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="an option of the method, e.g. --override=--model.init_args.feature_timestep=500",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    method = REPO_ROOT / "configs" / "methods" / "self_guidance.yaml"
    cli = build_cli(["-c", args.setup, "-c", str(method), *args.override], run=False)
    model, data = cli.model, cli.datamodule.train_data
    data.prepare_data()
    data.setup("fit")
    extractor = model.feature_extractor()
    start = time.perf_counter()
    indices, features = sharded_pass(
        CLUSTERS.dataset(data), lambda batch: extractor(batch["image"], batch["index"]), 128, model.device, 0, 1
    )
    print(f"{len(indices)} images, {extractor.description}: {time.perf_counter() - start:.1f} s")
    labels = {name: torch.from_numpy(data.table.column(name)[indices.numpy()]).long() for name in data.attributes}
    modes = find_modes(features, model.mode_min_share, model.seed)
    modes_report = cluster_report({n: v.numpy() for n, v in labels.items()}, modes.numpy(), int(modes.max()) + 1)
    print(f"{int(modes.max()) + 1} density modes, {int((modes < 0).sum())} images between them:")
    for row in modes_report["clusters"]:
        print(
            "  "
            + ", ".join(
                f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}" for key, value in row.items()
            )
        )
    sensitive = data.sensitive
    rows = []
    for k in [int(value) for value in args.clusters.split(",")]:
        _, assignments = fit_clusters(features, k, model.seed)
        draws = {
            "data": cluster_frequencies(assignments, k),
            "uniform": torch.full((k,), 1.0 / k, dtype=torch.float64),
            "modes": mode_balanced_weights(assignments, modes, k),
        }
        for draw, weights in draws.items():
            shares = {name: carried_shares(weights, assignments, values, k) for name, values in labels.items()}
            fd = 2**0.5 * abs(shares[sensitive] - 0.5)  # Choi et al.'s FD of a binary attribute
            rows.append({"K": k, "draw": draw, **{f"P({name})": value for name, value in shares.items()}, "FD": fd})
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print(
            "| "
            + " | ".join(f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values())
            + " |"
        )
    result = {"features": extractor.description, "modes": modes_report, "draws": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
