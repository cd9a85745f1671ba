"""What lowbit's integer arithmetic costs in time, measured interleaved in one process.

    python scripts/integer_costs.py [--model mobilenetv3_small] [--quantizer lsq] [--bits 4]
                                    [--batch 32] [--rounds 11] [--threads 2]

Two copies of one quantized model, with the same weights, take turns round by round:

- ``train_step``: a training step (forward, backward, SGD) of the model as every run builds it
  (``quantize_model``'s default: 8-bit output requantizers where the runtime needs them) over
  the same model without them (``integer_arithmetic=False``, the arithmetic before issue #27);
- ``eval_forward``: an evaluation forward in integer arithmetic over the same forward in float
  arithmetic (``lowbit.quant.integer.float_arithmetic``).

Prints one JSON line per measure: the median of the round-by-round ratios and the medians of
the two times in ms. Images are random (timings do not depend on the data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from lowbit.models.mobilenetv3 import mobilenetv3_large, mobilenetv3_small
from lowbit.models.nin import NIN
from lowbit.quant import quantize_model
from lowbit.quant.integer import float_arithmetic

MODELS = {
    "nin": lambda: NIN(num_classes=10),
    "mobilenetv3_small": lambda: mobilenetv3_small(num_classes=10, stem="cifar"),
    "mobilenetv3_large": lambda: mobilenetv3_large(num_classes=10, stem="cifar"),
}


def build(name: str, quantizer: str, bits: int, integer: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model(
        MODELS[name](),
        quantizer=quantizer,
        wbits=bits,
        abits=bits,
        input_bits=8,
        input_shape=(3, 32, 32),
        integer_arithmetic=integer,
    )


def timed(step) -> float:
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) * 1000


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenetv3_small")
    parser.add_argument("--quantizer", default="lsq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {
        "integer": build(args.model, args.quantizer, args.bits, True),
        "before": build(args.model, args.quantizer, args.bits, False),
    }
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=generator)
    target = torch.randint(0, 10, (args.batch,), generator=generator)
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}

    def train_step(key: str):
        def step():
            model = models[key].train()
            optimizers[key].zero_grad()
            F.cross_entropy(model(x), target).backward()
            optimizers[key].step()

        return step

    def eval_forward(integer: bool):
        def step():
            model = models["integer"].eval()
            with torch.no_grad():
                if integer:
                    model(x)
                else:
                    with float_arithmetic(model):
                        model(x)

        return step

    measures = {
        "train_step": (train_step("integer"), train_step("before")),
        "eval_forward": (eval_forward(True), eval_forward(False)),
    }
    for name, (a, b) in measures.items():
        a(), b()  # warm-up: first-batch initialisation, allocator
        times_a, times_b = [], []
        for _ in range(args.rounds):
            times_a.append(timed(a))
            times_b.append(timed(b))
        ratios = [ta / tb for ta, tb in zip(times_a, times_b)]
        print(
            json.dumps(
                {
                    "measure": name,
                    "model": args.model,
                    "quantizer": args.quantizer,
                    "bits": args.bits,
                    "batch": args.batch,
                    "rounds": args.rounds,
                    "ratio_median": round(statistics.median(ratios), 4),
                    "ms_median": round(statistics.median(times_a), 2),
                    "baseline_ms_median": round(statistics.median(times_b), 2),
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
