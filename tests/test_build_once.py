"""A run builds each part once: ``python train.py`` checks the command line, and the parts the
checks built (data, model, quantization plan) are the ones the run trains (issue 28).

The counts come from the user's own command, run in a child process whose builders count
their calls (``COUNTING``), then run ``train.py`` as ``python train.py`` runs it.
"""

from __future__ import annotations

import json

from conftest import run_code

from lowbit.train import RESULTS_FILE

# Wraps the functions that build or check a part, then runs train.py as __main__. The
# validation schema's checks are counted per key: each key is checked once, not once per pass.
COUNTING = """
import collections, json, runpy, sys
import lowbit.cli, lowbit.quant.convert, lowbit.train, lowbit.validation

counts = collections.Counter()

def counted(module, name):
    original = getattr(module, name)
    def wrapper(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)
    setattr(module, name, wrapper)

for module, name in [
    (lowbit.train, "build_datamodule"),
    (lowbit.train, "build_model"),
    (lowbit.train, "quantization_plan"),
    (lowbit.quant.convert, "probe_signed_inputs"),
    (lowbit.cli, "compose"),
    (lowbit.train, "check_config"),
]:
    counted(module, name)

checked, depth = collections.Counter(), [0]
call = lowbit.validation.Check.__call__
def counted_check(self, key, value):  # a check made of checks (lazy_choice) counts once
    checked[key] += depth[0] == 0
    depth[0] += 1
    try:
        return call(self, key, value)
    finally:
        depth[0] -= 1
lowbit.validation.Check.__call__ = counted_check

sys.argv = ["train.py", *sys.argv[1:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("COUNTS " + json.dumps({"parts": counts, "checks": checked}))
"""


def test_a_single_run_builds_its_data_model_and_plan_once(tmp_path):
    run_dir = tmp_path / "run"
    completed = run_code(
        COUNTING,
        [
            "quantizer=dorefa",
            "quant.wbits=4",
            "quant.abits=4",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=2",
            "test=false",
            "export.onnx=false",
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ],
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("COUNTS "))
    counts = json.loads(line.removeprefix("COUNTS "))
    assert counts["parts"] == {
        "build_datamodule": 1,
        "build_model": 1,
        "quantization_plan": 1,
        "probe_signed_inputs": 1,  # the plan's signed-input probe, a forward pass
        "compose": 1,  # lowbit's own; Hydra composes the job's config once more itself
        "check_config": 1,  # in the command line's checks; the run goes on with its parts
    }
    assert counts["checks"], "no schema check ran"
    assert {key: n for key, n in counts["checks"].items() if n != 1} == {}
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["status"] == "ok"
    assert results["startup"]["first_step_s"] > 0
    assert results["startup"]["from"] == "process start"
