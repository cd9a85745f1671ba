"""compile=true: refused cleanly where unsupported; a compiled step equals an eager one."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from omegaconf import OmegaConf

from lowbit.compiled import INDUCTOR_OPTIONS, compile_model, compile_requested
from lowbit.errors import ConfigError
from lowbit.quant import quantize_model
from lowbit.quant.functional import draw_key, uniform_noise_bits
from lowbit.quant.modules import gradient_quantizers, use_noise_stream


def test_compile_is_off_by_default_and_checked(make_cfg):
    assert compile_requested(make_cfg()) is False
    assert compile_requested(OmegaConf.create({"compile": True})) is True
    with pytest.raises(ConfigError, match="compile must be true or false"):
        compile_requested(OmegaConf.create({"compile": "yes"}))


@pytest.mark.parametrize(
    "trainer",
    [{"strategy": "ddp", "devices": 2}, {"devices": 4}, {"devices": "2"}, {"num_nodes": 2}],
)
def test_compile_with_ddp_is_refused_in_one_line(trainer):
    with pytest.raises(ConfigError) as error:
        compile_requested(OmegaConf.create({"compile": True, "trainer": trainer}))
    assert "\n" not in str(error.value) and "DDP" in str(error.value)
    assert compile_requested(OmegaConf.create({"compile": False, "trainer": trainer})) is False


def test_compile_with_gradient_quantization_is_accepted():
    assert compile_requested(OmegaConf.create({"compile": True, "quant": {"gbits": 8}}))
    assert compile_requested(OmegaConf.create({"compile": True, "quant": {"gbits": 32}}))


def test_a_run_with_a_bad_compile_value_stops_before_any_work(make_cfg):
    from lowbit.train import run

    with pytest.raises(ConfigError, match="must be true or false"):
        run(make_cfg("compile=maybe", "logger=none"))


def tiny_model(gbits: int = 32, quantizer: str = "dorefa", **options) -> torch.nn.Module:
    """Conv, BN, ReLU, conv, ReLU, linear on 3x8x8 images, quantized W4A4."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 5),
    )
    return quantize_model(
        model,
        quantizer=quantizer,
        wbits=4,
        abits=4,
        gbits=gbits,
        input_shape=(3, 8, 8),
        **options,
    )


def sgd_steps(model: torch.nn.Module, forward, steps: int = 2) -> list[torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=generator)
    target = torch.randint(0, 5, (4,), generator=generator)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(forward(x), target).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_a_run_compiles_with_lowbits_inductor_options(monkeypatch):
    from lowbit.tasks.classification import ClassificationTask

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    ClassificationTask(tiny_model(), num_classes=5).compile_training()
    assert calls == [{"options": INDUCTOR_OPTIONS}]


def test_every_job_of_a_multirun_trains_compiled(monkeypatch):
    # A multirun's jobs share one process, and TorchDynamo keeps at most 8 graphs per function
    # (here Sequential.forward) over every model it has seen: a quantized model takes two and
    # each bit width is a new guard, so the fifth job of `-m compile=true quant.wbits=2,3,4,5,6`
    # ran its forward eagerly, silently, until each run emptied the caches
    # (QuantTrainingTask.compile_training). Dynamo's eager backend: its graph cache, none of
    # inductor's compile time.
    from lowbit.tasks.classification import ClassificationTask

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    x = torch.randn(4, 3, 8, 8)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for bits in (2, 3, 4, 5, 6):
            torch.manual_seed(0)
            model = quantize_model(
                torch.nn.Sequential(
                    torch.nn.Conv2d(3, 8, 3, padding=1),
                    torch.nn.ReLU(),
                    torch.nn.Conv2d(8, 8, 3),  # the middle layer, at `bits`
                    torch.nn.ReLU(),
                    torch.nn.Flatten(),
                    torch.nn.Linear(8 * 6 * 6, 5),
                ),
                quantizer="dorefa",
                wbits=bits,
                abits=bits,
                input_bits=8,
                input_shape=(3, 8, 8),
            )
            task = ClassificationTask(model, num_classes=5)
            task.compile_training()
            task.train()
            for _step in range(2):  # the first-batch initialisation, then the steady step
                task(x)
    torch._dynamo.reset()


@pytest.mark.slow  # torch.compile's first compile takes tens of seconds on a CPU
@pytest.mark.parametrize("gbits", [32, 8])
def test_compiled_training_steps_equal_eager_ones(gbits):
    eager = tiny_model(gbits)
    compiled = copy.deepcopy(eager)
    use_noise_stream(eager, seed=3)
    use_noise_stream(compiled, seed=3)
    expected = sgd_steps(eager, eager)
    actual = sgd_steps(compiled, compile_model(compiled))  # as compile=true compiles
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the noise streams advanced alike: one draw per layer and step
    assert (
        [int(q.draws) for q in gradient_quantizers(compiled).values()]
        == [int(q.draws) for q in gradient_quantizers(eager).values()]
        == ([2] * 3 if gbits < 32 else [0] * 3)
    )


@pytest.mark.slow  # one compile per draw size
def test_compiled_noise_hash_gives_eager_bits():
    # 40 elements: the wrapping int32 form, compiled, differed from eager from element 16 on
    # (the vectorised loop's second block); 4001: a vector part and a scalar tail.
    compiled_key = torch.compile(draw_key, dynamic=False)
    compiled_bits = torch.compile(uniform_noise_bits, dynamic=False)
    cpu = torch.device("cpu")
    for numel in (40, 4001):
        for base, draw in ((1, 0), (2**64 - 1, 2**40 + 7)):
            key = draw_key(base, torch.tensor(draw))
            assert torch.equal(compiled_key(base, torch.tensor(draw)), key)
            assert torch.equal(compiled_bits(key, numel, cpu), uniform_noise_bits(key, numel, cpu))


@pytest.mark.parametrize(
    "quantizer, options",
    [
        ("dorefa", {"gbits": 8}),
        ("pact", {"alpha_calibration": 99.0}),
        ("lsq", {}),
        ("dorefa", {"gbits": 8, "input_bits": 8}),  # every run's default: the image quantized
    ],
)
def test_quantized_models_trace_as_one_graph(quantizer, options):
    # A graph break (a tensor's truth value, say) splits the compiled step at every layer and
    # re-traces each piece per call site; the quantizers' state flags are Python bools for it.
    options = dict(options)
    model = tiny_model(options.pop("gbits", 32), quantizer, **options)
    use_noise_stream(model, seed=0)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):  # before and after the first batch's calibration or initialisation
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        model(x)


def test_a_plain_torch_compile_trains_with_gradient_quantization():
    # A user's own loop, torch.compile as PyTorch documents it, no lowbit options and no noise
    # stream: each draw's key comes from torch's generator. The key used to pass through
    # int(seed), a symbolic int under dynamo, and inductor then generated the hash in float; the
    # second step failed to build ("invalid operands of types 'float' and 'float' to binary
    # 'operator&'").
    torch._dynamo.reset()
    model = tiny_model(gbits=8)
    before = [p.detach().clone() for p in model.parameters()]
    after = sgd_steps(model, torch.compile(model), steps=3)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    torch._dynamo.reset()


def test_a_draw_key_from_a_seed_tensor_equals_the_integer_one():
    seeds = [0, 1, 12345, (1 << 62) - 1]
    for seed in seeds:
        draw = torch.tensor(7, dtype=torch.int64)
        assert int(draw_key(torch.tensor(seed), draw)) == int(draw_key(seed, draw))


def test_a_model_with_output_requantizers_traces_as_one_graph():
    # conv -> BN -> hard-swish -> conv: the first conv's output is requantized on 8 bits in
    # training (lowbit.quant.integer's OutputRequantizer), whose flags are Python bools too
    torch.manual_seed(0)
    model = quantize_model(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.Hardswish(),
            torch.nn.Conv2d(8, 8, 3),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 6 * 6, 5),
        ),
        quantizer="lsq",
        wbits=4,
        abits=4,
        input_bits=8,
        input_shape=(3, 8, 8),
    )
    assert type(model[2]).__name__ == "BatchNorm2d" and "requant" in model._modules
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        model(x)
