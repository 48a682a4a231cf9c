"""The base class of every debiasing method: a LightningModule over a frozen diffusion backbone."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from lightning_fair.backbones import AdapterInputs, Condition, DiffusionBackbone, load_backbone
from lightning_fair.backbones.base import HEdit
from lightning_fair.data.base import VIEW_TOLERANCE, AttributeDataModule
from lightning_fair.data.generated import as_stored
from lightning_fair.data.prompt_sets import batch_prompt, sample_numbers
from lightning_fair.diffusion import DiffusionSampler, SamplerConfig, SamplingState, Step
from lightning_fair.diffusion.class_draws import draw_classes
from lightning_fair.diffusion.guidance import guided_eps, is_unguided
from lightning_fair.diffusion.seeding import CONDITION_STREAM
from lightning_fair.methods.conditions import ClassConditions, Prompts
from lightning_fair.methods.lifecycle.checkpoints import CheckpointHygiene
from lightning_fair.methods.lifecycle.runtime import RunHooks


class DebiasingMethod(ClassConditions, RunHooks, CheckpointHygiene, LightningModule):
    """A debiasing method: hooks over a frozen diffusion backbone (pixel or latent) and the shared sampling loop.

    Subclasses set ``name`` (their key in :func:`method_registry`) and override:

    - :meth:`configure_modules`: build the trainable parts (called at the end of ``__init__``);
    - :meth:`training_step` / :meth:`configure_optimizers`, if the method trains something;
    - :meth:`init_state`: per-sample conditions of a batch of generation requests;
    - :meth:`guided_eps`: the noise prediction used at each denoising step, usually through :meth:`unet_eps`
      (the backbone's call with the sampler's classifier-free guidance).

    Conditions are written once for every kind of backbone: :meth:`neutral_condition` (null label, neutral prompt
    or nothing) and :meth:`class_condition` (class labels, or one prompt per class from ``prompts.classes``).

    The base provides :meth:`sample`, ``test_step``/``predict_step`` (generation requests in, images and the
    conditions used out), checkpoint hygiene (:class:`~lightning_fair.methods.lifecycle.checkpoints.CheckpointHygiene`:
    frozen modules, the backbone and any a subclass adds with :meth:`add_frozen`, are never written into a checkpoint,
    stay in eval mode, and are re-loaded from their references when the checkpoint is restored) and, for a method that
    needs a fit, the checkpoint callback of the fit (:meth:`configure_callbacks`).

    Args:
        backbone: a local diffusers folder (pixel ``UNet2DModel`` or ``StableDiffusionPipeline``) or the name of a
            shipped model.
        sampler: settings of the sampling loop.
        seed: seed of the run; sample ``i`` depends only on ``(seed, i)``.
        prompts: the prompts on a text-to-image backbone (see :class:`Prompts`).
    """

    name: ClassVar[str] = ""
    #: Whether a sample depends on the other samples of its batch (a batch statistic, as Distribution Guidance's
    #: distribution); otherwise sample ``i`` is the same in any batch.
    batch_level: ClassVar[bool] = False
    #: The conditionings of the backbones the method works on (``none``, ``class``, ``text``).
    conditionings: ClassVar[tuple[str, ...]] = ("none", "class", "text")

    def __init__(
        self, backbone: str, sampler: SamplerConfig | None = None, seed: int = 0, prompts: Prompts | None = None
    ) -> None:
        super().__init__()
        # Plain values only in hparams, so checkpoints load with torch.load(weights_only=True).
        sampler = SamplerConfig(**sampler) if isinstance(sampler, dict) else sampler or SamplerConfig()
        prompts = Prompts(**prompts) if isinstance(prompts, dict) else prompts
        self.save_hyperparameters(ignore=["sampler", "prompts"])
        self.hparams.update(sampler=asdict(sampler), prompts=None if prompts is None else asdict(prompts))
        self.frozen_names: list[str] = []
        self.backbone_reference = backbone
        self.checkpoint_dir: str | Path | None = None
        self.add_frozen("backbone", load_backbone(backbone))
        if prompts is not None and self.backbone.conditioning != "text":
            raise ValueError(
                f"Option 'prompts' is for text-to-image backbones; '{backbone}' takes "
                f"{'class labels' if self.backbone.conditioning == 'class' else 'no condition'}"
            )
        self.prompts = prompts or Prompts()
        _ = self.prompt_set  # reads and checks the prompt set (a file, templates) before any run
        self.sampler = DiffusionSampler(
            self.backbone.scheduler_config, sampler, clip_sample=not self.backbone.is_latent
        )
        self.seed = seed
        self.configure_modules()

    backbone: DiffusionBackbone

    def add_frozen(self, name: str, module: nn.Module) -> None:
        """Registers a frozen module: no gradients, always in eval mode, never in a checkpoint."""
        module.requires_grad_(False)
        module.eval()
        setattr(self, name, module)
        self.frozen_names.append(name)

    def train(self, mode: bool = True) -> DebiasingMethod:
        """Sets the trainable modules' mode; frozen modules stay in eval mode."""
        super().train(mode)
        for name in self.frozen_names:
            getattr(self, name).eval()
        return self

    def configure_modules(self) -> None:
        """Builds the method's trainable modules (none by default)."""

    def fit_diagnostics(self) -> list[Path]:
        """Files ``fit`` wrote that show how it went (curves, accuracies, cluster reports); none by default.

        Reports copy them next to a cached fit, so a fit reused later still shows them.
        """
        return []

    def evaluation_targets(self) -> dict[str, list[float]]:
        """The distribution this method aims for, per attribute it names (what an evaluator measures it against).

        Empty by default: the evaluator then uses its own options, or the uniform distribution.
        """
        return {}

    def unet_eps(
        self,
        x: Tensor,
        step: Step,
        state: SamplingState,
        condition: Condition = None,
        h_edit: HEdit | None = None,
        adapter: AdapterInputs | None = None,
        null_adapter: AdapterInputs | None = None,
    ) -> Tensor:
        """The backbone's noise for ``condition`` (default: the state's), with the sampler's classifier-free guidance.

        ``h_edit`` replaces the h-space tensor inside the call; under guidance it sees both halves of the batched
        ``[conditional; null]`` call. ``adapter`` (and, for the null half, ``null_adapter``) is what a trainable
        module adds to the call.
        """
        config = self.sampler.config
        condition = state.condition if condition is None else condition
        return guided_eps(
            self.backbone,
            x,
            step.timestep,
            condition,
            state.null_condition,
            config.cfg_scale,
            config.cfg_formula,
            h_edit=h_edit,
            adapter=adapter,
            null_adapter=null_adapter,
        )

    def draw_classes(self, indices: Tensor, probabilities: Tensor, stream: int = CONDITION_STREAM) -> Tensor:
        """Each sample's class from ``probabilities``, as ``sampler.condition_draw`` says, on the module's device."""
        balanced = self.sampler.config.condition_draw == "balanced"
        if balanced:  # every prompt's samples balanced on their own
            indices = sample_numbers(indices)
        return draw_classes(self.seed, indices, probabilities, stream, balanced).to(self.device)

    @property
    def uses_cfg(self) -> bool:
        """Whether the sampler's classifier-free guidance needs a null branch."""
        return not is_unguided(self.sampler.config.cfg_scale, self.sampler.config.cfg_formula)

    def setup(self, stage: str) -> None:
        """Checks, before any step, that the real images of ``fit``/``validate`` fit the backbone."""
        data = self.image_data() if stage in ("fit", "validate") else None
        if data is None:
            return
        channels, height, width = self.backbone.image_shape
        where = f"the training images of '{data.root}'"
        if (height, width) != (data.image_size, data.image_size) or channels != 3:
            raise ValueError(
                f"Option 'image_size' of {where} is {data.image_size} (3x{data.image_size}x{data.image_size} "
                f"images) but the backbone '{self.backbone.reference}' works on {channels}x{height}x{width} images: "
                f"set the data's image_size to {height}"
            )
        crop, trained = data.center_crop_fraction, self.backbone.center_crop_fraction
        if trained is not None and abs(crop - trained) > VIEW_TOLERANCE * trained:
            raise ValueError(
                f"Option 'center_crop' of {where} ({data.center_crop}) keeps {crop:.4g} of the source images' shorter "
                f"side but the backbone '{self.backbone.reference}' was trained on {trained:.4g} of it: set the "
                "data's center_crop to match"
            )

    def image_data(self) -> AttributeDataModule | None:
        """The DataModule of the real images ``fit``/``validate`` read (``train_data`` of generation requests)."""
        data = self.trainer.datamodule
        data = getattr(data, "train_data", data)
        return data if isinstance(data, AttributeDataModule) else None

    def required_image_data(self) -> AttributeDataModule:
        """:meth:`image_data`, or a one-line error for a method that trains on real images and is given none."""
        data = self.image_data()
        if data is None:
            raise ValueError(
                f"{type(self).__name__} trains on real images: give 'data.init_args.train_data' (an image DataModule "
                "such as the setup's ${dataset}); generated images are not its training data"
            )
        return data

    @property
    def needs_fit(self) -> bool:
        """Whether ``fit`` must run before sampling: by default, whether the method has trainable parameters."""
        return any(parameter.requires_grad for parameter in self.parameters())

    def init_state(self, indices: Tensor) -> SamplingState:
        """The sampling state of a batch; by default the neutral condition (null label, neutral prompt, none)."""
        return SamplingState(indices=indices, condition=self.neutral_condition(len(indices), batch_prompt(indices)))

    @abstractmethod
    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """The noise prediction the sampler uses at ``step`` (the method's intervention)."""

    def sample(self, indices: Tensor | int) -> tuple[Tensor, SamplingState]:
        """Generates the samples with the given global indices (or ``0..n-1`` for an int).

        Returns:
            Images in [-1, 1], shape ``(B, C, H, W)``, and the final sampling state (with the conditions).
        """
        if isinstance(indices, int):
            indices = torch.arange(indices)
        indices = indices.cpu().long()
        state = self.init_state(indices)
        if self.uses_cfg and state.null_condition is None:
            if self.backbone.conditioning == "none":
                raise ValueError(
                    f"Sampler option 'cfg_scale' guides a conditional model; '{self.backbone.reference}' is "
                    "unconditional"
                )
            state.null_condition = self.null_condition(len(indices))
        x = self.sampler.sample(self.guided_eps, state, self.seed, self.backbone.sample_shape, self.device)
        return self.backbone.decode(x), state

    def join_empty_batch(self) -> None:
        """Called instead of sampling on a process whose share of a global batch is empty.

        A method whose sampling steps talk to the other processes (e.g. a statistic over the global batch)
        makes the same collective calls here, with nothing to add, so the other processes do not wait forever.
        """

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Turns a batch of generation requests into images plus the conditions used.

        A batch that ``GenerationRequests(skip_existing=...)`` read back from earlier records carries their images
        and conditions, which are passed on as they are (``read_back``), so that the callbacks see every sample of a
        resumed run; otherwise the images are generated, and quantised as the records store them when the batch asks
        for it (``as_stored``).
        """
        indices = batch["index"]
        if "images" in batch:
            images = batch["images"].reshape(len(indices), *self.backbone.image_shape)
            return {"images": images, "index": indices, "conditions": batch["conditions"], "read_back": True}
        if len(indices) == 0:
            self.join_empty_batch()
            images, conditions = torch.empty((0, *self.backbone.image_shape), device=self.device), {}
        else:
            images, state = self.sample(indices)
            conditions = state.conditions
        if batch.get("as_stored", False):
            images = as_stored(images)
        return {"images": images, "index": indices, "conditions": conditions, "read_back": False}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Same as :meth:`test_step`."""
        return self.test_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        """No optimizer unless a subclass trains something."""
        return None

    def checkpoint_folder(self, default_root_dir: str | Path) -> Path:
        """Where a fit's ``last.ckpt`` goes: ``checkpoint_dir`` when set, else ``checkpoints/`` in the run's folder."""
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(default_root_dir) / "checkpoints"

    def configure_callbacks(self) -> list[Callback]:
        """The checkpoint of a fit, when the method needs one: ``last.ckpt``, rewritten at the end of every epoch.

        It is written after the method's own ``on_train_epoch_end`` (so a scale calibrated there is in it), and at the
        end of a fit without optimizer steps (a calibration), into :meth:`checkpoint_folder`. None when the trainer has
        checkpointing off (``enable_checkpointing: false``).
        """
        if not self.needs_fit or not self.trainer.checkpoint_callbacks:
            return []
        folder = self.checkpoint_folder(self.trainer.default_root_dir)
        checkpoint = ModelCheckpoint(
            dirpath=folder, filename="last", enable_version_counter=False, save_on_train_epoch_end=True, save_last=True
        )
        return [checkpoint]


def method_registry() -> dict[str, type[DebiasingMethod]]:
    """Every imported :class:`DebiasingMethod` subclass with a ``name``, by name."""
    registry: dict[str, type[DebiasingMethod]] = {}
    pending = list(DebiasingMethod.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.name:
            if cls.name in registry and registry[cls.name] is not cls:
                raise ValueError(f"Two methods are named {cls.name!r}: {registry[cls.name]} and {cls}")
            registry[cls.name] = cls
    return registry
