"""Mixed precision: each layer's weight width chosen under a size, BOPs or latency budget.

``sensitivity`` scores each layer at each width, ``costs`` prices it in packed bytes and BOPs,
``latency`` measures its int8 and float time in ONNX Runtime, ``ilp`` picks the widths,
``allocation`` is the file that carries them to a training run, and ``allocate`` runs them for
``scripts/allocate.py``. docs/mixed_precision.md shows the use.
"""
