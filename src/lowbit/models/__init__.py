"""Model architectures. Models know nothing of quantization: ``quantize_model`` converts them."""

from lowbit.models.mobilenetv3 import MobileNetV3
from lowbit.models.nin import NIN
from lowbit.models.yolov3_tiny import YOLOv3Tiny

__all__ = ["MobileNetV3", "NIN", "YOLOv3Tiny"]
