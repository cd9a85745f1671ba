"""Deployable forms of a trained model: bit-packed checkpoints and integer ONNX graphs."""

from lowbit.export.packing import load_packed, payload_bytes, save_packed

# The ONNX names load onnx/onnxruntime on first use only: training imports this package.
ONNX_NAMES = {
    "export_int8_onnx": "lowbit.export.onnx",
    "export_fp32_onnx": "lowbit.export.onnx",
    "ort_static_qdq": "lowbit.export.onnx",
    "onnx_latency_ms": "lowbit.export.onnx",
    "onnx_latency_table": "lowbit.export.onnx",
    "onnx_predict": "lowbit.export.onnx",
    "top1_agreement": "lowbit.export.onnx",
    "UnsupportedModel": "lowbit.export.onnx_graph",
    "export_run": "lowbit.export.onnx_run",
    "export_model": "lowbit.export.onnx_run",
}


def __getattr__(name: str):
    if name in ONNX_NAMES:
        import importlib

        return getattr(importlib.import_module(ONNX_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load_packed", "payload_bytes", "save_packed", *ONNX_NAMES]
