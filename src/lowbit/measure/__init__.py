"""What a model costs: parameters and bits-aware size, MACs, batch-1 latency."""

from lowbit.measure.complexity import count_bops, count_macs
from lowbit.measure.latency import measure_latency
from lowbit.measure.size import model_size

__all__ = ["count_bops", "count_macs", "measure_latency", "model_size"]
