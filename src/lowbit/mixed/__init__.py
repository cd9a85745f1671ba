"""Mixed precision: each layer's weight width chosen under a size or BOPs budget.

``sensitivity`` scores each layer at each width, ``costs`` prices it in packed bytes and BOPs,
``ilp`` picks the widths, ``allocation`` is the file that carries them to a training run, and
``allocate`` runs the four for ``scripts/allocate.py``. docs/mixed_precision.md shows the use.
"""
