"""lowbit: quantization-aware training experiments with Hydra, Lightning and W&B."""

__version__ = "0.1.0"
