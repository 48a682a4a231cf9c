"""The evaluation lifecycle of generated images: a :class:`FairnessSuite` fed by ``test``/``predict``, written out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_fair.classifiers import load_classifier
from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.prompt_sets import PromptSet, prompt_of
from lightning_fair.metrics import FairnessResult, FairnessSuite, validate_distribution
from lightning_fair.metrics.prompts import across_prompts
from lightning_fair.metrics.quality import reference_features
from lightning_fair.utils.files import write_text_atomically
from lightning_fair.utils.run_folder import run_folder


class FairnessEvaluator(Callback):
    """Evaluates the images a method generates in ``test`` (or ``predict``) with a :class:`FairnessSuite`.

    The callback runs the lifecycle only: at the start it loads the classifier on the device and the reference
    features and builds the suite; each generated batch updates it; at the end every process computes the
    (synchronised, exact) :class:`FairnessResult`, the same whatever the number of processes, kept as ``result``,
    logged under ``test/`` and written to ``metrics.json`` and ``metrics.md`` in the log directory. A metric the
    samples cannot determine (e.g. ``dp_gap`` when no sample is predicted in the target's class 1) is ``null``, with
    a warning naming why:

    - ``fd``, ``fd_l1``, ``fd_kl``: distance of the predicted ``sensitive`` distribution to the target;
    - ``fd/<attribute>``: the same (L2) for each attribute of ``extra_targets`` (e.g. when several are balanced);
    - ``fd_given_<target>=<k>``: the same within each predicted class of ``target``;
    - ``dp_gap``: demographic-parity gap of ``target`` (class 1) across predicted ``sensitive`` groups;
    - ``bias_score``: InvDiff's pairwise bias score of ``sensitive``;
    - ``bias_score/<attribute>=<k>`` and ``bias_score_by/<attribute>`` (their mean over the requested classes): the
      same within the samples a method requested class ``k`` of ``attribute`` for, for every attribute it reports
      as a per-sample condition (InvDiff's score per prompt or class);
    - ``proportion/<attribute>=<k>`` for every attribute the classifier predicts;
    - ``confident/<sensitive>``: fraction of samples whose ``sensitive`` prediction has probability >= 0.9;
    - ``agreement/<attribute>`` and ``agreement/<attribute>=<k>``: for every attribute a method reports as a
      per-sample condition (e.g. the class drawn for conditional sampling, Attribute Switching's final class), the
      fraction of samples predicted as the requested class, overall and per requested class;
    - ``fid_cls`` and ``kid_cls`` (with ``kid_cls_std``): FID/KID in the classifier's feature space against
      the whole ``reference`` split (features cached in ``cache_dir``, keyed on the image files, the transform
      and the classifier), over the samples in index order (see ``FeatureDistance``). Named after their
      features: they are not Inception FID. With a zero-shot CLIP classifier they are ``fid_clip``/``kid_clip``,
      and ``clip_score`` (mean CLIP score of each image against its neutral prompt) is added;
    - ``unknown/<sensitive>``: the share of samples a zero-shot classifier's ``threshold`` leaves unlabelled (left
      out of every proportion and distance).

    With a prompt set (a method whose ``prompts`` name several neutral prompts), every metric but the quality ones is
    also computed per prompt, and ``metrics.json`` holds ``per_prompt`` (each prompt, its metadata and metrics) and
    ``across_prompts`` (each metric's mean, standard deviation and worst prompt); the means are logged as
    ``test/across_prompts/<name>``. A target distribution applies to every prompt.

    The target distributions come from the method: what it declares it aims for
    (:meth:`DebiasingMethod.evaluation_targets`) sets ``target_distribution`` of ``sensitive`` and ``extra_targets``
    (its other attributes) unless they are given here; a method that declares nothing is measured against the
    uniform distribution.

    Args:
        classifier: an ``AttributeClassifier`` checkpoint, pretrained folder or shipped name, or a zero-shot CLIP
            classifier (a spec file, or a CLIP folder with its ``zero_shot.json``; see ``ZeroShotClassifier``).
        sensitive: the attribute to balance (one the classifier predicts).
        target: optional content attribute (for ``fd_given_*`` and ``dp_gap``).
        target_distribution: fair distribution of ``sensitive`` (default: the method's, else uniform).
        reference: DataModule of real images for ``fid_cls``/``kid_cls`` (``None``: no quality metrics).
        reference_split: split of ``reference`` to compare with (a balanced one).
        kid_subset_size: images per KID subset (capped by the number of generated and of reference images).
        cache_dir: where reference features are cached (default: ``<root of reference>/.cache``).
        extra_targets: further attributes to report FD for, with their target distributions (default: the
            method's other declared targets).
    """

    def __init__(
        self,
        classifier: str,
        sensitive: str,
        target: str | None = None,
        target_distribution: list[float] | None = None,
        reference: AttributeDataModule | None = None,
        reference_split: str = "test",
        kid_subset_size: int = 256,
        cache_dir: str | None = None,
        extra_targets: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.classifier_reference = classifier
        self.classifier = load_classifier(classifier)
        self.sensitive, self.target = sensitive, target
        self.sensitive_column = self.classifier.attribute_index(sensitive, "sensitive")
        if target is not None:
            self.classifier.attribute_index(target, "target")
        if target_distribution is not None:
            classes = self.classifier.num_classes[self.sensitive_column]
            validate_distribution(target_distribution, classes, "target_distribution")
        for name, values in (extra_targets or {}).items():
            classes = self.classifier.num_classes[self.classifier.attribute_index(name, "extra_targets")]
            validate_distribution(values, classes, f"extra_targets.{name}")
        self.target_distribution, self.extra_targets = target_distribution, extra_targets
        self.reference = reference
        self.reference_split = reference_split
        if kid_subset_size < 2:
            raise ValueError(f"Option 'kid_subset_size' must be at least 2, got {kid_subset_size}")
        self.kid_subset_size = kid_subset_size
        self.cache_dir = cache_dir
        self.suite: FairnessSuite | None = None
        self.result: FairnessResult | None = None
        self.prompt_set: PromptSet | None = None
        self.prompt_suites = nn.ModuleList()
        self.prompt_results: list[FairnessResult] = []
        self._reference: Tensor | None = None

    def targets_for(self, pl_module: LightningModule) -> tuple[list[float] | None, dict[str, list[float]]]:
        """The target of ``sensitive`` and the extra targets: the options, else what the method declares."""
        declared = dict(getattr(pl_module, "evaluation_targets", dict)())
        own = declared.pop(self.sensitive, None)
        target_distribution = own if self.target_distribution is None else self.target_distribution
        if own is not None and not torch.allclose(
            torch.tensor(own).double(), torch.tensor(target_distribution).double()
        ):
            rank_zero_warn(
                f"FairnessEvaluator measures {self.sensitive} against target_distribution {target_distribution}; "
                f"{type(pl_module).__name__} aims for {own}"
            )
        if self.extra_targets is not None:
            return target_distribution, self.extra_targets
        predicted = set(self.classifier.attributes)
        return target_distribution, {name: value for name, value in declared.items() if name in predicted}

    def _reference_features(self) -> Tensor:
        """Classifier features of the whole ``reference`` split (from the cache when it holds them)."""
        self.reference.prepare_data()
        dataset = self.reference.dataset(self.reference_split)
        cache = Path(self.cache_dir) if self.cache_dir else self.reference.root / ".cache"
        with self.classifier.inputs_from(self.reference.center_crop_fraction, f"the images of '{self.reference.root}'"):
            return reference_features(self.classifier, dataset, cache)

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.classifier.to(pl_module.device)
        self.classifier.expect_generated(pl_module)
        if self.reference is not None and self._reference is None:
            # Computed once, by one process: every process then holds the very same reference features.
            features = self._reference_features() if trainer.is_global_zero else None
            self._reference = trainer.strategy.broadcast(features, src=0)
        target_distribution, extra_targets = self.targets_for(pl_module)
        options = (self.classifier, self.sensitive, self.target, target_distribution, extra_targets)
        self.suite = FairnessSuite(*options, self._reference, self.kid_subset_size).to(pl_module.device)
        self.prompt_set = getattr(pl_module, "prompt_set", None)
        many = self.prompt_set is not None and len(self.prompt_set) > 1
        suites = [FairnessSuite(*options) for _ in self.prompt_set.prompts] if many else []
        self.prompt_suites = nn.ModuleList(suites).to(pl_module.device)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Loads the classifier on the device and the reference features, and builds the suite."""
        self._start(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Loads the classifier on the device and the reference features, and builds the suite."""
        self._start(trainer, pl_module)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Updates the suites with the batch's images, their sample indices and the conditions they were given."""
        self._update(outputs)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Updates the suites with the batch's images, their sample indices and the conditions they were given."""
        self._update(outputs)

    def _update(self, outputs: dict[str, Any]) -> None:
        """Feeds a batch to the suite of all samples and to the suite of each prompt it holds."""
        images, conditions, indices = outputs["images"], outputs.get("conditions") or {}, outputs["index"]
        prompts = prompt_of(indices.cpu())
        texts = None if self.prompt_set is None else [self.prompt_set.prompts[p] for p in prompts.tolist()]
        self.suite.update(images, conditions, indices, texts)
        for prompt in prompts.unique().tolist() if self.prompt_suites else []:
            rows = (prompts == prompt).nonzero().flatten()
            self.prompt_suites[prompt].update(
                images[rows.to(images.device)],
                {name: values[rows.to(values.device)] for name, values in conditions.items()},
                indices[rows.to(indices.device)],
                [texts[row] for row in rows.tolist()],
            )

    def _finish(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        self.result = self.suite.compute()
        self.prompt_results = [suite.compute() for suite in self.prompt_suites]  # every process, in order
        metrics = self.result.metrics()
        summary = across_prompts(self.prompt_results, list(self.prompt_set.prompts)) if self.prompt_results else {}
        if log:
            logged = metrics | {f"across_prompts/{name}": entry["mean"] for name, entry in summary.items()}
            for name, value in logged.items():
                if value is not None:  # the same names on every process: the results are synchronised
                    pl_module.log(f"test/{name}", float(value), sync_dist=True)  # equal on all ranks already
        folder = run_folder(trainer)
        if trainer.is_global_zero:
            write_metrics(
                self.result,
                folder,
                type(pl_module).__name__,
                self.classifier_reference,
                self.prompt_set if self.prompt_results else None,
                self.prompt_results,
            )

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Computes, logs and writes the metrics."""
        self._finish(trainer, pl_module, log=True)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Computes and writes the metrics (``predict`` does not log)."""
        self._finish(trainer, pl_module, log=False)


def write_metrics(
    result: FairnessResult,
    folder: Path,
    method: str,
    classifier: str,
    prompt_set: PromptSet | None = None,
    prompt_results: list[FairnessResult] | None = None,
) -> None:
    """Writes ``metrics.json`` and a Markdown table ``metrics.md`` into ``folder`` (undefined metrics: null).

    With a prompt set and one result per prompt, ``metrics.json`` adds ``per_prompt`` and ``across_prompts`` and
    ``metrics.md`` a table of each prompt's FD and proportions of ``sensitive``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    metrics = result.metrics()
    record = {
        "method": method,
        "classifier": classifier,
        "sensitive": result.sensitive,
        "target": result.target,
        "target_distribution": result.target_distribution,
        "extra_targets": result.extra_targets,
        "metrics": metrics,
    }
    lines = [f"# {method}: fairness of {result.num_samples} generated images", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in metrics.items()]
    if prompt_set is not None and prompt_results:
        record["per_prompt"] = [
            {"prompt": prompt, "metadata": metadata, "metrics": prompt_result.metrics()}
            for prompt, metadata, prompt_result in zip(
                prompt_set.prompts, prompt_set.metadata, prompt_results, strict=True
            )
        ]
        record["across_prompts"] = across_prompts(prompt_results, list(prompt_set.prompts))
        lines += ["", f"## Per prompt ({len(prompt_results)} prompts)", ""]
        lines += _prompt_table(prompt_set, prompt_results, record["across_prompts"])
    for name, text in (
        ("metrics.json", json.dumps(record, indent=2, allow_nan=False) + "\n"),
        ("metrics.md", "\n".join(lines) + "\n"),
    ):
        write_text_atomically(folder / name, text)


def _cell(value: Any) -> str:
    return "null" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _prompt_table(prompt_set: PromptSet, results: list[FairnessResult], summary: dict[str, Any]) -> list[str]:
    """Each prompt's samples, FD and predicted shares of ``sensitive``, then the mean and standard deviation."""
    sensitive = results[0].sensitive
    shares = [name for name in results[0].metrics() if name.startswith(f"proportion/{sensitive}=")]
    columns = ["fd", *shares, *(["clip_score"] if "clip_score" in summary else [])]
    lines = [f"| prompt | samples | {' | '.join(columns)} |", f"|---|---|{'---|' * len(columns)}"]
    for prompt, result in zip(prompt_set.prompts, results, strict=True):
        values = result.metrics()
        lines.append(f"| {prompt} | {result.num_samples} | {' | '.join(_cell(values.get(c)) for c in columns)} |")
    for statistic in ("mean", "std"):
        cells = " | ".join(_cell(summary.get(column, {}).get(statistic)) for column in columns)
        lines.append(f"| **{statistic}** | | {cells} |")
    return lines
