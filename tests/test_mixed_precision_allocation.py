"""Mixed-precision allocation (issue #29): the milp allocator against brute force, sensitivity
estimates against exact values, costs against the packer and count_bops, each layer's int8 and
float time in ONNX Runtime (structure and consistency, never a speed), and the user's path:
scripts/allocate.py on a trained run, then train.py quant.allocation=FILE."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FAST, compose_config, load_script
from torch import nn

from lowbit.cli import preflight
from lowbit.errors import ConfigError
from lowbit.export.onnx import optimized_op_types
from lowbit.export.packing import pack_codes, packed_code_bytes, save_packed
from lowbit.measure.complexity import count_bops
from lowbit.mixed import costs, ilp
from lowbit.mixed.allocation import Allocation, with_allocation
from lowbit.mixed.latency import layer_latency
from lowbit.mixed.sensitivity import hutchinson_traces, layer_sensitivity
from lowbit.models.nin import NIN, conv_bn_relu
from lowbit.quant.convert import edge_layers, plan_quantization, quantize_model
from lowbit.quant.schemes import LSQ
from lowbit.results import PACKED_FILE
from lowbit.train import run
from lowbit.wandb_log import packed_bytes_by_key

SHAPE = (3, 32, 32)
LSQ_QUANT = {
    "quantizer": "lsq",
    "wbits": 4,
    "abits": 4,
    "gbits": 32,
    "first_layer_bits": 8,
    "last_layer_bits": 8,
    "input_bits": 8,
}


# -- the allocator ------------------------------------------------------------------------------


def brute_force(options: dict[str, list[ilp.Option]], limit: float) -> float | None:
    """The least total sensitivity over every allocation within ``limit``; None if none is."""
    best = None
    for combination in itertools.product(*options.values()):
        if sum(o.costs["size"] for o in combination) <= limit:
            value = sum(o.sensitivity for o in combination)
            best = value if best is None else min(best, value)
    return best


def random_problem(rng: np.random.Generator, layers: int, widths: list[int]):
    options = {}
    for i in range(layers):
        sizes = rng.integers(1, 50, len(widths)).cumsum()  # wider costs more
        scores = np.sort(rng.random(len(widths)))[::-1]  # and hurts less
        options[f"l{i}"] = [
            ilp.Option(b, float(s), {"size": int(c)}) for b, s, c in zip(widths, scores, sizes)
        ]
    return options


@pytest.mark.parametrize("seed", range(20))
def test_the_milp_optimum_is_brute_force_s(seed):
    rng = np.random.default_rng(seed)
    options = random_problem(rng, layers=4, widths=[2, 4, 8])
    least, most = ilp.cheapest(options, "size"), sum(o[-1].costs["size"] for o in options.values())
    limit = float(rng.integers(least, most + 1))
    chosen = ilp.solve(options, {"size": limit})
    assert ilp.total(chosen, "size") <= limit
    assert ilp.total(chosen) == pytest.approx(brute_force(options, limit), abs=1e-12)


def test_a_hand_made_problem_gets_its_known_optimum():
    # a: 2 bits scores 1.0, 8 bits 0; b: 2 bits 0.1, 8 bits 0. Room for one wide layer:
    # widening a saves more, though its 8 bits cost more bytes than b's.
    options = {
        "a": [ilp.Option(2, 1.0, {"size": 10}), ilp.Option(8, 0.0, {"size": 40})],
        "b": [ilp.Option(2, 0.1, {"size": 5}), ilp.Option(8, 0.0, {"size": 20})],
    }
    chosen = ilp.solve(options, {"size": 50})
    assert {name: o.width for name, o in chosen.items()} == {"a": 8, "b": 2}
    assert ilp.total(chosen) == pytest.approx(0.1)


def test_an_infeasible_budget_names_the_cheapest_allocation():
    options = random_problem(np.random.default_rng(0), layers=3, widths=[2, 4])
    least = ilp.cheapest(options, "size")
    assert least == sum(o[0].costs["size"] for o in options.values())
    with pytest.raises(ilp.Infeasible) as error:
        ilp.solve(options, {"size": least - 1})
    assert error.value.smallest == least
    assert ilp.solve(options, {"size": least})  # exactly the cheapest fits


def brute_force_linked(options, links, limit: float) -> tuple[float, float] | None:
    """(least sensitivity, least time) over every allocation within ``limit`` in "ms", a link
    charged once when any of its (layer, width) pairs is chosen."""
    best, fastest = None, None
    for combination in itertools.product(*options.values()):
        pairs = {(name, o.width) for name, o in zip(options, combination)}
        ms = sum(o.costs["ms"] for o in combination)
        ms += sum(link.costs["ms"] for link in links if pairs & set(link.when))
        fastest = ms if fastest is None else min(fastest, ms)
        if ms <= limit:
            value = sum(o.sensitivity for o in combination)
            best = value if best is None else min(best, value)
    return best, fastest


def test_a_latency_problem_with_a_junction_gets_its_known_optimum():
    # int8 (8) takes 1 ms, float (32) 2 ms and scores 0; float on either side of the junction
    # between a and b adds 5 ms, once. In 8 ms one layer can be float: a, which saves more.
    options = {
        "a": [ilp.Option(8, 1.0, {"ms": 1}), ilp.Option(32, 0.0, {"ms": 2})],
        "b": [ilp.Option(8, 0.5, {"ms": 1}), ilp.Option(32, 0.0, {"ms": 2})],
    }
    links = [ilp.Link((("a", 32), ("b", 32)), {"ms": 5})]
    chosen = ilp.solve(options, {"ms": 8}, links)
    assert {name: o.width for name, o in chosen.items()} == {"a": 32, "b": 8}
    assert ilp.total(chosen, "ms", links) == 8
    assert ilp.total(chosen) == pytest.approx(0.5)
    assert ilp.cheapest(options, "ms", links) == 2
    with pytest.raises(ilp.Infeasible):
        ilp.solve(options, {"ms": 1.5}, links)
    # without the junction both would fit (4 ms) and score 0: the link is what stops it
    assert ilp.total(ilp.solve(options, {"ms": 8})) == 0


@pytest.mark.parametrize("seed", range(10))
def test_the_milp_optimum_with_links_is_brute_force_s(seed):
    rng = np.random.default_rng(seed)
    options = {
        f"l{i}": [
            ilp.Option(8, float(rng.random()), {"ms": float(rng.random())}),
            ilp.Option(32, 0.0, {"ms": float(rng.random() * 2)}),
        ]
        for i in range(4)
    }
    links = [
        ilp.Link(((f"l{i}", 32), (f"l{i + 1}", 32)), {"ms": float(rng.random())}) for i in range(3)
    ]
    _, fastest = brute_force_linked(options, links, np.inf)
    assert ilp.cheapest(options, "ms", links) == pytest.approx(fastest)
    limit = fastest + float(rng.random()) * 2
    chosen = ilp.solve(options, {"ms": limit}, links)
    assert ilp.total(chosen, "ms", links) <= limit + 1e-9
    best, _ = brute_force_linked(options, links, limit)
    assert ilp.total(chosen) == pytest.approx(best, abs=1e-12)


# -- sensitivity --------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def tiny_batches():
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 1, 6, 6, generator=generator),
            torch.randint(0, 4, (8,), generator=generator),
        )
        for _ in range(2)
    ]


def exact_traces(model: Tiny, batches) -> dict[str, float]:
    """Tr of each weight's diagonal Hessian block, by the full Hessian."""
    import torch.nn.functional as F
    from torch.func import functional_call

    params = dict(model.named_parameters())
    traces = {}
    for key in ("conv.weight", "fc.weight"):

        def loss(w, key=key):
            state = {**params, key: w}
            total = 0
            for x, y in batches:
                total = total + F.cross_entropy(functional_call(model, state, (x,)), y)
            return total / len(batches)

        hessian = torch.autograd.functional.hessian(loss, params[key].detach())
        traces[key.removesuffix(".weight")] = float(
            hessian.reshape(params[key].numel(), -1).trace()
        )
    return traces


def test_hutchinson_traces_agree_with_the_exact_hessian_within_their_standard_error():
    model, batches = Tiny(), tiny_batches()
    weights = {"conv": model.conv.weight, "fc": model.fc.weight}
    estimated = hutchinson_traces(model, weights, batches, samples=400, seed=0)
    for name, exact in exact_traces(model, batches).items():
        mean, error = estimated[name]
        assert 0 < error < abs(exact)
        assert abs(mean - exact) < 4 * error, (name, mean, exact, error)


def test_traces_within_two_standard_errors_of_zero_are_named_uncertain():
    from lowbit.mixed.sensitivity import LayerSensitivity, uncertain_traces

    scores = {
        "clear": LayerSensitivity("clear", 9, {2: 1.0}, trace=10.0, trace_se=1.0),
        "noise": LayerSensitivity("noise", 9, {2: 0.1}, trace=1.0, trace_se=1.0),
        "negative": LayerSensitivity("negative", 9, {2: 0.0}, trace=-3.0, trace_se=2.0),
        "one_sample": LayerSensitivity("one_sample", 9, {2: 1.0}, trace=1.0, trace_se=math.nan),
        "fisher": LayerSensitivity("fisher", 9, {2: 1.0}),
    }
    assert uncertain_traces(scores) == ["noise", "negative"]


def test_the_hessian_runs_through_mobilenet_gates_and_puts_them_back():
    """torch cannot differentiate hardsigmoid's or hardswish's backward: the Hessian pass swaps
    them for the same functions in clamps, which give the same outputs, and puts them back."""
    from lowbit.mixed.sensitivity import twice_differentiable
    from lowbit.models import MobileNetV3

    torch.manual_seed(0)
    model = MobileNetV3("small", num_classes=10, stem="cifar").eval()
    images, labels = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    kinds = [type(m) for m in model.modules()]
    with torch.no_grad(), twice_differentiable(model):
        assert nn.Hardswish not in {type(m) for m in model.modules()}
        swapped = model(images)
    assert [type(m) for m in model.modules()] == kinds
    with torch.no_grad():
        assert torch.allclose(swapped, model(images), atol=1e-5)
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][1:4]
    scores, _ = layer_sensitivity(
        "hessian", model, LSQ(), layers, [2, 8], [(images, labels)], samples=2
    )
    assert all(score.trace is not None for score in scores.values())


@pytest.mark.parametrize("method", ["hessian", "fisher", "ablation"])
def test_each_method_scores_every_width_and_leaves_the_model_as_it_was(method):
    model, batches = Tiny(), tiny_batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores, seconds = layer_sensitivity(
        method, model, LSQ(), ["conv", "fc"], [2, 8], batches, samples=4
    )
    assert set(scores) == {"conv", "fc"} and seconds > 0
    for score in scores.values():
        assert set(score.by_width) == {2, 8}
        if method != "ablation":  # a quadratic form: coarser rounding scores higher
            assert score.by_width[2] > score.by_width[8] >= 0
    assert (scores["conv"].trace is not None) == (method == "hessian")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["hessian", "fisher", "ablation"])
def test_float_weights_score_0_in_every_method(method):
    scores, _ = layer_sensitivity(
        method, Tiny(), LSQ(), ["conv", "fc"], [2, 32], tiny_batches(), samples=2
    )
    assert all(score.by_width[32] == 0 for score in scores.values())


# -- costs ---------------------------------------------------------------------------------------


def nin_at(allocation: Allocation) -> nn.Module:
    torch.manual_seed(0)
    return quantize_model(NIN(), input_shape=SHAPE, **with_allocation(LSQ_QUANT, allocation))


def test_packed_code_bytes_is_what_pack_codes_writes():
    for count, bits in [(1, 2), (7, 3), (8, 3), (1000, 5), (37, 8), (5, 16)]:
        assert pack_codes(torch.zeros(count, dtype=torch.int64), bits).numel() == packed_code_bytes(
            count, bits
        )


@pytest.mark.parametrize("uniform", [True, False])
def test_each_layer_s_bytes_and_bops_are_the_packer_s_and_count_bops(uniform, tmp_path):
    torch.manual_seed(0)
    model = NIN()
    _, plan = plan_quantization(model, input_shape=SHAPE, **LSQ_QUANT)
    layers = [name for name in plan if name not in edge_layers(model)]
    widths = dict(zip(layers, itertools.repeat(3) if uniform else itertools.cycle([2, 5, 8])))
    allocation = Allocation(widths, "lsq")
    priced = costs.width_costs(model, plan, layers, [2, 3, 5, 8], SHAPE)
    quantized = nin_at(allocation)
    packed = packed_bytes_by_key(save_packed(quantized, tmp_path / "m.safetensors"))
    bops = count_bops(quantized, SHAPE)
    for name, bits in widths.items():
        assert packed[f"{name}.weight"] == priced[name][bits][costs.SIZE]
        assert bops[name] == priced[name][bits][costs.BOPS]
    measured = costs.measure(model, LSQ_QUANT, allocation, SHAPE)
    assert measured.size_bytes == (tmp_path / "m.safetensors").stat().st_size
    assert measured.bops == sum(bops.values())
    assert 0 <= measured.slack < 8 + 22 * len(packed)


@pytest.mark.parametrize("quantizer", ["lsq", "pact", "dorefa"])
def test_a_float_layer_s_bytes_and_bops_are_the_packer_s_and_count_bops(quantizer, tmp_path):
    torch.manual_seed(0)
    model = NIN()
    quant = {**LSQ_QUANT, "quantizer": quantizer}
    _, plan = plan_quantization(model, input_shape=SHAPE, **quant)
    layers = [name for name in plan if name not in edge_layers(model)]
    widths = dict(zip(layers, itertools.cycle([32, 3])))
    priced = costs.width_costs(model, plan, layers, [3, 32], SHAPE)
    quantized = quantize_model(
        NIN(), input_shape=SHAPE, **with_allocation(quant, Allocation(widths, quantizer))
    )
    packed = packed_bytes_by_key(save_packed(quantized, tmp_path / "m.safetensors"))
    bops = count_bops(quantized, SHAPE)
    for name, bits in widths.items():
        assert packed[f"{name}.weight"] == priced[name][bits][costs.SIZE]
        assert bops[name] == priced[name][bits][costs.BOPS]


# -- latency: each layer's int8 and float time in ONNX Runtime -------------------------------


def test_each_layer_has_an_int8_and_a_float_time_and_the_prediction_adds_up():
    torch.manual_seed(0)
    model = nn.Sequential(  # first and last layers fixed at 8 bits, "1.0" and "3.0" allocated
        conv_bn_relu(3, 8, 3),
        conv_bn_relu(8, 8, 1),
        nn.MaxPool2d(2),
        conv_bn_relu(8, 8, 3),
        conv_bn_relu(8, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    layers = ["1.0", "3.0"]
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    table = layer_latency(model, LSQ_QUANT, layers, 8, (3, 8, 8), images, 1, warmup=1, repeats=3)
    assert set(table.layers) == set(layers) and table.threads == 1 and table.model_int8_ms > 0
    assert all(t.int8_ms > 0 and t.float_ms > 0 for t in table.layers.values())
    # the clip after the first layer, and the max pooling between the allocated layers; not
    # the clip before the last layer, whose float output keeps it in NCHW anyway
    assert [(j.producer, j.consumer, j.ends) for j in table.junctions] == [
        ("0.0", "1.0", ("1.0",)),
        ("1.0", "3.0", ("1.0", "3.0")),
    ]
    assert all(j.ms > 0 for j in table.junctions)
    int8 = dict.fromkeys(layers, 4)
    assert table.predicted(int8) == pytest.approx(table.model_int8_ms)  # measured there
    assert table.float_scale > 0 and table.model_float_ms > 0
    if table.float_scale != 1:  # 1: noise made the all-float model look faster than its parts
        assert table.predicted(dict.fromkeys(layers, 32)) == pytest.approx(table.model_float_ms)
    mixed = {"1.0": 4, "3.0": 32}
    layer_ms = table.layers["1.0"].int8_ms + table.layers["3.0"].float_ms * table.float_scale
    assert table.predicted(mixed) == pytest.approx(
        table.fixed_ms + layer_ms + table.junctions[1].ms
    )
    assert table.fixed_ms == pytest.approx(
        table.model_int8_ms - sum(t.int8_ms for t in table.layers.values())
    )


# -- the user's path: scripts/allocate.py, then train.py quant.allocation= ---------------------


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("source") / "fp32"
    run(compose_config([*FAST, "logger=none", "export.onnx=false"], output_dir))
    return output_dir


ALLOCATE = ["quantizer=lsq", "sensitivity.batch_size=16", "sensitivity.batches=1"]


def allocate(args: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit status, stdout lines, stderr) of scripts/allocate.py ARGS."""
    script = load_script("allocate")
    try:
        script.main(args)
        status = 0
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


@pytest.mark.parametrize("key, tiny", [("size_kb", 1), ("bops_ratio", 0.01)])
def test_an_infeasible_budget_is_one_line_naming_the_smallest_and_exit_2(
    fp32_run, capsys, key, tiny
):
    status, out, err = allocate([str(fp32_run), *ALLOCATE, f"budget.{key}={tiny}"], capsys)
    assert status == 2 and out == []
    (line,) = err.strip().splitlines()
    assert line.startswith(f"lowbit: error: budget.{key}={tiny} is below") and ">=" in line
    smallest = float(line.rsplit(">=", 1)[1])
    status, out, err = allocate(
        [str(fp32_run), *ALLOCATE, f"budget.{key}={smallest}", "method=fisher"], capsys
    )
    assert status == 0, err
    summary = json.loads(out[-1])
    assert set(summary) == {"allocation", "size_bytes", "bops", "predicted_sensitivity"}
    if key == "size_kb":
        assert summary["size_bytes"] <= smallest * 1000
    else:
        assert summary["bops"] <= smallest * costs.reference_bops(NIN(), SHAPE)


@pytest.mark.parametrize(
    "args, words",
    [
        (["method=hessain", "budget.size_kb=400"], "method"),
        (["budget.size_kb=400", "widths=[2,40]"], "widths"),
        (["budget.size_kb=400", "widths=[32]"], "at least one below 32"),
        (["budget.latency_ms=5", "widths=[2,12,32]"], "re-rounded onto int8"),
        (["budget.latency_ms=5", "quant.abits=32"], "quant.abits<=8"),
        (["quantizer=fp32", "budget.size_kb=400"], "quantizer=fp32"),
        ([], "no budget given"),
        (["budget.size_kb=[300,350]", "budget.bops_ratio=[0.3]"], "same number of values"),
        (["budget.size_kb=[300,350]", "output=one.yaml"], "names one file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(fp32_run, capsys, args, words):
    status, out, err = allocate([str(fp32_run), "quantizer=lsq", *args], capsys)
    assert status == 2 and out == []
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_a_list_of_budgets_makes_one_allocation_each_from_one_scoring(fp32_run, capsys):
    status, out, err = allocate(
        [str(fp32_run), *ALLOCATE, "budget.size_kb=[290,340]", "method=fisher"], capsys
    )
    assert status == 0, err
    last = json.loads(out[-1])
    assert [json.loads(line) for line in out[-3:-1]] == last["allocations"]
    files = [Path(entry["allocation"]) for entry in last["allocations"]]
    assert [f.name for f in files] == ["lsq-fisher-sizekb290.yaml", "lsq-fisher-sizekb340.yaml"]
    sizes = [entry["size_bytes"] for entry in last["allocations"]]
    assert sizes[0] <= 290_000 < sizes[1] <= 340_000  # each budget met, the larger one used
    written = [yaml.safe_load(f.read_text()) for f in files]
    # one scoring pass served both, and each file keeps the scores it was chosen from
    assert written[0]["sensitivity_seconds"] == written[1]["sensitivity_seconds"]
    assert written[0]["scores"] == written[1]["scores"]
    assert set(written[0]["scores"]) == set(written[0]["overrides"])
    for name, score in written[0]["scores"].items():
        assert set(score["by_width"]) == {2, 3, 4, 6, 8}, name
    assert last["train"] == (
        f"python train.py -m quant.allocation={files[0]},{files[1]} quantizer=lsq init={fp32_run}"
    )
    # scripts/allocations_table.py: one row per file, by budget, with every layer's width
    table = load_script("allocations_table")
    assert table.main([str(f) for f in reversed(files)]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [row["budget_size_kb"] for row in rows] == ["290", "340"]
    for row, entry, body in zip(rows, last["allocations"], written):
        assert int(row["size_bytes"]) == entry["size_bytes"]
        assert {n: int(row[n]) for n in body["overrides"]} == {
            n: bits["wbits"] for n, bits in body["overrides"].items()
        }
    # the multirun's override parses into one job per file
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (sweep,) = OverridesParser.create().parse_overrides([last["train"].split()[3]])
    assert [str(v) for v in sweep.sweep_iterator()] == [str(f) for f in files]


def test_the_same_command_scores_the_same_images(fp32_run, tmp_path, capsys):
    files = [tmp_path / "first.yaml", tmp_path / "second.yaml"]
    for file in files:
        args = [*ALLOCATE, "budget.size_kb=300", "method=fisher", f"output={file}"]
        status, _, err = allocate([str(fp32_run), *args], capsys)
        assert status == 0, err
    first, second = (yaml.safe_load(f.read_text())["scores"] for f in files)
    assert first == second


def test_allocate_then_train_gives_the_predicted_file_within_budget(fp32_run, tmp_path, capsys):
    file = tmp_path / "allocation.yaml"
    status, out, err = allocate(
        [str(fp32_run), *ALLOCATE, "budget.size_kb=300", "method=hessian", f"output={file}"],
        capsys,
    )
    assert status == 0, err
    summary = json.loads(out[-1])
    assert summary["allocation"] == str(file) and summary["size_bytes"] <= 300_000
    written = yaml.safe_load(file.read_text())
    widths = {name: bits["wbits"] for name, bits in written["overrides"].items()}
    assert set(widths) == {f"features.{i}.0" for i in (1, 2, 4, 5, 6, 8, 9)}  # no edge layer
    assert len(set(widths.values())) > 1  # the budget sits between two uniform widths
    for name, bits in widths.items():  # the table shows each layer with its chosen width
        (row,) = [line.split() for line in out if line.startswith(name + " ")]
        assert row[-3] == str(bits)

    ptq = tmp_path / "ptq"
    results = run(
        compose_config(
            [
                *FAST,
                "logger=none",
                "export.onnx=false",
                "quantizer=lsq",
                "trainer.max_epochs=0",
                f"init={fp32_run}",
                f"quant.allocation={file}",
            ],
            ptq,
        ),
        ptq,
    )
    assert results["allocation"]["wbits"] == widths
    assert results["metrics"]["model/size_bytes"] == summary["size_bytes"]
    assert (ptq / PACKED_FILE).stat().st_size == summary["size_bytes"]
    assert results["metrics"]["model/bops"] == summary["bops"]


LATENCY = ["widths=[2,8,32]", "export.threads=1", "latency.warmup=1", "latency.repeats=3"]


def test_an_infeasible_latency_budget_is_one_line_naming_the_fastest_and_exit_2(fp32_run, capsys):
    status, out, err = allocate(
        [str(fp32_run), *ALLOCATE, *LATENCY, "budget.latency_ms=0.001"], capsys
    )
    assert status == 2 and out == []
    (line,) = err.strip().splitlines()
    assert line.startswith(
        "lowbit: error: budget.latency_ms=0.001 is below the fastest allocation's latency_ms="
    )
    assert float(line.rsplit(">=", 1)[1]) > 0.001


def test_a_float_allocation_by_latency_adds_up_then_trains_packs_and_exports(
    fp32_run, tmp_path, capsys
):
    file = tmp_path / "allocation.yaml"
    args = [*ALLOCATE, *LATENCY, "budget.latency_ms=1000", "method=fisher", f"output={file}"]
    status, out, err = allocate([str(fp32_run), *args], capsys)
    assert status == 0, err
    summary = json.loads(out[-1])
    assert summary["latency_ms"] <= 1000
    header, *rows = [line.split() for line in out if line.startswith(("layer ", "features."))]
    at = header.index("int8_ms")
    assert header[at : at + 3] == ["int8_ms", "float_ms", "wbits"]
    assert all(float(row[at]) > 0 and float(row[at + 1]) > 0 for row in rows)
    # float scores 0 at every layer: a budget this large keeps every allocated layer float
    widths = {
        name: bits["wbits"] for name, bits in yaml.safe_load(file.read_text())["overrides"].items()
    }
    assert set(widths.values()) == {32} and {row[0] for row in rows} == set(widths)
    (line,) = [line for line in out if line.startswith("latency: ")]
    fixed, layers, between, predicted = map(float, re.findall(r"(-?[0-9.]+) ms", line)[:4])
    assert fixed + layers + between == pytest.approx(predicted, abs=2e-3)
    assert layers == pytest.approx(sum(float(row[at + 1]) for row in rows), abs=1e-2)
    assert predicted == pytest.approx(summary["latency_ms"], abs=1e-3)

    ptq = tmp_path / "ptq"
    overrides = [*FAST, "logger=none", "quantizer=lsq", "trainer.max_epochs=0"]
    overrides += ["export.openvino=false", "export.threads=1"]
    cfg = compose_config([*overrides, f"init={fp32_run}", f"quant.allocation={file}"], ptq)
    results = run(cfg, ptq)
    assert results["allocation"]["wbits"] == widths
    assert results["allocation"]["latency_ms"] == summary["latency_ms"]
    assert results["metrics"]["model/size_bytes"] == summary["size_bytes"]
    assert (ptq / PACKED_FILE).stat().st_size == summary["size_bytes"]
    assert results["metrics"]["model/bops"] == summary["bops"]
    assert results["metrics"]["latency/int8_ms"] > 0
    ops = optimized_op_types(ptq / "model_int8.onnx", tmp_path / "optimized.onnx")
    # the first conv on int8; every allocated layer float, and the float-output classifier
    assert ops.count("QLinearConv") == 1


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "no such file"),
        ("overrides: {features.1.0: {wbits: 4}}\n", "not an allocation file"),
        (
            "format: lowbit-allocation\nversion: 1\nquantizer: lsq\n"
            "overrides: {features.1.0: {wbits: 40}}\n",
            "features.1.0.wbits=40",
        ),
        (
            "format: lowbit-allocation\nversion: 1\nquantizer: pact\n"
            "overrides: {features.1.0: {wbits: 4}}\n",
            "made for quantizer=pact",
        ),
        (
            "format: lowbit-allocation\nversion: 1\nquantizer: lsq\n"
            "overrides: {classifier: {wbits: 4}}\n",
            "'classifier', which is not a Conv2d/Linear layer",
        ),
    ],
)
def test_a_bad_allocation_file_is_one_line_and_exit_2_before_work(tmp_path, capsys, content, words):
    file = tmp_path / "allocation.yaml"
    if content is not None:
        file.write_text(content)
    with pytest.raises(SystemExit) as stop:
        preflight(["quantizer=lsq", f"quant.allocation={file}", "logger=none"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err


@pytest.mark.slow
def test_a_qat_run_of_an_allocation_packs_within_its_budget(fp32_run, tmp_path, capsys):
    """Training moves the weight steps, whose decimal text is in the packed file's header: the
    budget's reserve (costs.header_slack) keeps the trained file within it."""
    file = tmp_path / "allocation.yaml"
    status, out, err = allocate(
        [str(fp32_run), *ALLOCATE, "budget.size_kb=290", "method=fisher", f"output={file}"],
        capsys,
    )
    assert status == 0, err
    qat = tmp_path / "qat"
    overrides = [*FAST, "logger=none", "export.onnx=false", "quantizer=lsq"]
    cfg = compose_config([*overrides, f"init={fp32_run}", f"quant.allocation={file}"], qat)
    results = run(cfg, qat)
    assert results["metrics"]["model/size_bytes"] <= 290_000
    assert abs(results["metrics"]["model/size_bytes"] - json.loads(out[-1])["size_bytes"]) < 64


def mixed_payload(allocation: str | None, seed: int, record: dict | None) -> dict:
    """A results.json of an LSQ NIN run, trained from ``allocation`` (its ``record``) or not."""
    return {
        "status": "ok",
        "model": "nin",
        "dataset": "digits",
        "seed": seed,
        "quant": {**LSQ_QUANT, "allocation": allocation},
        "metrics": {"val/acc_best": 0.9},
        **({"allocation": record} if record else {}),
    }


def test_the_report_marks_a_mixed_run_apart_from_the_uniform_ones():
    from lowbit.report.configs import group_configurations
    from lowbit.report.runs import run_from_results

    def payload(allocation: str | None, seed: int) -> dict:
        record = {"wbits": {"features.1.0": 2}} if allocation else None
        return mixed_payload(allocation, seed, record)

    runs = [run_from_results(payload(a, s)) for a in (None, "h.yaml", "f.yaml") for s in (0, 1)]
    assert [r.wbits for r in runs] == [4, 4, None, None, None, None]
    names = [c.name for c in group_configurations(runs)]
    assert len(names) == 3 and "lsq W4A4" in names
    assert sorted(n for n in names if "mixed" in n) == [
        "lsq mixed A4 (allocation=f.yaml)",
        "lsq mixed A4 (allocation=h.yaml)",
    ]


def test_the_report_pools_the_seeds_of_one_allocation_recipe_whatever_their_files():
    """Each seed's source model has its own allocation file: the seeds of one method and budget
    are one configuration, another budget is another."""
    from lowbit.report.configs import group_configurations
    from lowbit.report.runs import run_from_results

    def payload(budget: float, seed: int) -> dict:
        file = f"fp32-s{seed}/allocations/lsq-hessian-sizekb{budget:g}.yaml"
        record = {
            "path": file,
            "wbits": {"features.1.0": 2 + seed},
            "method": "hessian",
            "budget": {"size_kb": budget},
        }
        return mixed_payload(file, seed, record)

    runs = [run_from_results(payload(b, s)) for b in (340, 400) for s in (0, 1, 2)]
    configurations = group_configurations(runs)
    assert sorted(c.name for c in configurations) == [
        "lsq mixed A4 (allocation=hessian size_kb=340)",
        "lsq mixed A4 (allocation=hessian size_kb=400)",
    ]
    assert [len(c.counted) for c in configurations] == [3, 3]


def test_the_report_judges_each_mixed_run_against_the_uniform_one_nearest_in_size():
    from lowbit.report.comparisons import draw_comparisons
    from lowbit.report.configs import group_configurations
    from lowbit.report.runs import run_from_results

    def payload(wbits: int, allocation: str | None, size: int, acc: float, seed: int) -> dict:
        return {
            "status": "ok",
            "model": "nin",
            "dataset": "digits",
            "seed": seed,
            "quant": {**LSQ_QUANT, "wbits": wbits, "allocation": allocation},
            "metrics": {"test/acc": acc + seed / 1000, "model/size_bytes": size},
            **({"allocation": {"wbits": {"features.1.0": 2}}} if allocation else {}),
        }

    runs = [
        run_from_results(payload(*setting, seed))
        for setting in [(2, None, 280, 0.90), (3, None, 400, 0.95), (4, None, 520, 0.97)]
        + [(4, "m.yaml", 395, 0.99)]
        for seed in range(3)
    ]
    drawn = draw_comparisons(group_configurations(runs), "test/acc")
    (mixed,) = [c for c in drawn if c.kind == "mixed"]
    assert (mixed.better.name, mixed.worse.name) == ("lsq mixed A4", "lsq W3A4")
    assert mixed.difference.delta == pytest.approx(0.04)
    assert all("mixed" not in c.better.name + c.worse.name for c in drawn if c.kind != "mixed")


def test_the_allocation_s_widths_win_over_overrides_whose_other_bits_stay():
    from lowbit.quant.convert import plan_bits

    quant = {**LSQ_QUANT, "overrides": {"features.1.0": {"abits": 8}, "features.*": {"wbits": 5}}}
    merged = with_allocation(quant, Allocation({"features.1.0": 2}, "lsq"))
    names = [f"features.{i}.0" for i in (0, 1, 2, 10)]
    settings = {k: merged[k] for k in ("wbits", "abits", "gbits")}
    edges = {k: merged[k] for k in ("first_layer_bits", "last_layer_bits")}
    plan = plan_bits(names, **settings, **edges, overrides=merged["overrides"])
    assert (plan["features.1.0"].wbits, plan["features.1.0"].abits) == (2, 8)
    assert (plan["features.2.0"].wbits, plan["features.2.0"].abits) == (5, 4)
    with pytest.raises(ConfigError, match="made for quantizer=lsq"):
        with_allocation({**quant, "quantizer": "pact"}, Allocation({"features.1.0": 2}, "lsq"))
