"""Model architectures. Models know nothing of quantization: ``quantize_model`` converts them."""

from lowbit.models.nin import NIN

__all__ = ["NIN"]
