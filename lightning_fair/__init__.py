"""lightning-fair: debiasing pretrained diffusion models with PyTorch Lightning."""

__version__ = "0.1.0.dev0"
