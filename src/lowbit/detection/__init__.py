"""YOLO detection maths, apart from any model: target assignment and loss, decoding, drawing
(into the pixels, or as W&B's native boxes).

The model (``lowbit.models.yolov3_tiny``) only returns raw head maps; the LightningModule
(``lowbit.tasks.detection``) combines it with these functions.
"""

from lowbit.detection.decode import decode_heads, postprocess
from lowbit.detection.loss import YOLOLoss

__all__ = ["YOLOLoss", "decode_heads", "postprocess"]
