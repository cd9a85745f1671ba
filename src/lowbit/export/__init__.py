"""Deployable forms of a trained model: bit-packed checkpoints and integer ONNX graphs."""

from lowbit.export.packing import load_packed, payload_bytes, save_packed

__all__ = ["load_packed", "payload_bytes", "save_packed"]
