"""Model architectures. Models know nothing of quantization: ``quantize_model`` converts them."""

from lowbit.models.mobilenetv3 import MobileNetV3
from lowbit.models.nin import NIN

__all__ = ["MobileNetV3", "NIN"]
