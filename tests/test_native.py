"""The native kernels (Eq. 12, PACT's forward): the same bits as the tensor paths, used wherever
they can be, and a clean fall back to the tensor paths where they cannot be built."""

from __future__ import annotations

import logging

import pytest
import torch

from lowbit.quant import functional, native

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """An empty build cache and no library loaded; restored afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.kernels.cache_clear()
    yield
    native.kernels.cache_clear()


def tensor_path(monkeypatch, function, *args):
    monkeypatch.setenv(native.SWITCH, "0")
    native.kernels.cache_clear()
    try:
        return function(*args)
    finally:
        monkeypatch.delenv(native.SWITCH)
        native.kernels.cache_clear()


def count_native_calls(monkeypatch, name: str = "quantize_gradient_rows") -> list[int]:
    calls = []
    original = getattr(native, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(native, name, counted)
    return calls


@needs_compiler
@pytest.mark.parametrize("shape", [(64, 32, 8, 8), (3, 5), (7,), (2, 70_001)])
@pytest.mark.parametrize("bits", [2, 8, 16])
def test_native_kernel_gives_the_tensor_paths_bits(monkeypatch, fresh_kernel, shape, bits):
    generator = torch.Generator().manual_seed(bits)
    g = torch.randn(shape, generator=generator)
    if g.dim() > 1:
        g = g * torch.rand(shape[0], *[1] * (g.dim() - 1), generator=generator)  # rows' own m
        g[1] = 0  # a zero row stays zero
    key = functional.draw_key(2026, torch.tensor(bits))
    calls = count_native_calls(monkeypatch)
    fused = functional.quantize_gradient_tensor(g, bits, key)
    assert calls == [1]
    reference = tensor_path(monkeypatch, functional.quantize_gradient_tensor, g, bits, key)
    assert len(calls) == 1  # the reference did not use the kernel
    assert torch.equal(fused, reference)
    assert fused.shape == g.shape and fused.dtype == g.dtype
    if g.dim() > 1:
        assert not fused[1].any()


@needs_compiler
def test_native_kernel_splits_over_threads_without_changing_a_bit(fresh_kernel):
    g = torch.randn(32, 50_000)
    key = functional.draw_key(7, torch.tensor(1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = functional.quantize_gradient_tensor(g, 4, key)
        torch.set_num_threads(2)
        two = functional.quantize_gradient_tensor(g, 4, key)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@needs_compiler
def test_training_backward_goes_through_the_native_kernel(monkeypatch, fresh_kernel):
    """What a run does: the quantized layer's backward calls the kernel (a regression to the
    slow path would otherwise pass every other test)."""
    calls = count_native_calls(monkeypatch)
    x = torch.randn(4, 8, requires_grad=True)
    key = functional.draw_key(1, torch.tensor(0))
    functional.dorefa_gradient(x, 8, key).sum().backward()
    assert calls == [1] and x.grad is not None


def test_switched_off_or_unbuildable_it_falls_back_to_the_tensor_path(
    monkeypatch, fresh_kernel, tmp_path, caplog
):
    failing = tmp_path / "broken-cc"
    failing.write_text("#!/bin/sh\necho 'broken-cc: cannot compile' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    g = torch.randn(6, 10)
    key = functional.draw_key(3, torch.tensor(2))
    calls = count_native_calls(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        result = functional.quantize_gradient_tensor(g, 4, key)
    assert native.kernels() is None and calls == []
    assert "did not build" in caplog.text and "broken-cc: cannot compile" in caplog.text
    assert not list((tmp_path / "lowbit").glob("*.so"))  # no half-written library left
    native.kernels.cache_clear()
    monkeypatch.setenv(native.SWITCH, "0")
    assert native.kernels() is None
    assert torch.equal(result, functional.quantize_gradient_tensor(g, 4, key))


def test_the_build_cache_is_per_cpu_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    here = native.library_path("/usr/bin/cc")
    assert here.parent == tmp_path / "lowbit"
    monkeypatch.setattr(native, "cpu_identity", lambda: "another CPU")
    assert native.library_path("/usr/bin/cc") != here
    assert native.library_path("/usr/bin/clang") != native.library_path("/usr/bin/cc")


def test_cuda_half_and_float64_gradients_keep_the_tensor_path():
    assert not native.usable(torch.zeros(2, dtype=torch.float64))
    assert not native.usable(torch.zeros(2, dtype=torch.bfloat16))
    if torch.cuda.is_available():
        assert not native.usable(torch.zeros(2, device="cuda"))


@needs_compiler
def test_compiled_code_calls_the_kernel_as_one_operator_and_matches_eager_bits(fresh_kernel):
    """fullgraph=True: the kernel is an operator in the graph, not a break. Through inductor's
    own kernel the same function gives other bits (most elements differ in the last place), so
    equality shows the custom operator ran."""
    g = torch.randn(16, 3000)
    key = functional.draw_key(5, torch.tensor(1))
    compiled = torch.compile(
        lambda g, key: functional.quantize_gradient_tensor(g, 8, key), fullgraph=True
    )
    assert torch.equal(compiled(g, key), functional.quantize_gradient_tensor(g, 8, key))


@needs_compiler
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("alpha", [0.37, 3.0, 10.0])
def test_native_pact_forward_gives_the_tensor_paths_bits(monkeypatch, fresh_kernel, bits, alpha):
    x = 3 * torch.randn(8, 16, 9, 9, generator=torch.Generator().manual_seed(bits))
    x[0, 0, 0, :3] = torch.tensor([float("nan"), -0.0, alpha])  # NaN kept, the ends exact
    alpha_tensor = torch.tensor(alpha, requires_grad=True)
    calls = count_native_calls(monkeypatch, "pact_forward")
    fused = functional.pact(x, alpha_tensor, bits)
    assert calls == [1]
    reference = tensor_path(monkeypatch, functional.pact, x, alpha_tensor, bits)
    assert len(calls) == 1
    assert torch.equal(fused.nan_to_num(), reference.nan_to_num())
    assert fused.isnan().sum() == 1 and fused.requires_grad
    # the backward is the tensor path's either way: Eq. 3 on the saved input
    (grad_alpha,) = torch.autograd.grad(fused.nan_to_num().sum(), alpha_tensor)
    assert grad_alpha == (x >= alpha).sum()  # upstream gradient 1 where x >= alpha


@needs_compiler
def test_channels_last_tensors_keep_their_layout_and_the_tensor_paths_bits(
    monkeypatch, fresh_kernel
):
    # NHWC activations and gradients (bench --layouts nhwc) go through the kernels as they
    # lie in memory: no NCHW copy in, a channels-last result out, and still the tensor paths'
    # bits. Eq. 12's rows are in memory order, so its noise differs from an NCHW run's.
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(6, 8, 5, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    key = functional.draw_key(11, torch.tensor(2))
    calls = count_native_calls(monkeypatch)
    fused = functional.quantize_gradient_tensor(g, 8, key)
    reference = tensor_path(monkeypatch, functional.quantize_gradient_tensor, g, 8, key)
    assert calls == [1] and torch.equal(fused, reference)
    assert fused.is_contiguous(memory_format=torch.channels_last) and not fused.is_contiguous()
    # each sample's max is kept (Eq. 12 puts it on the grid's end), whatever the layout
    samples_max = g.abs().amax(dim=(1, 2, 3))
    torch.testing.assert_close(fused.abs().amax(dim=(1, 2, 3)), samples_max)
    nchw = functional.quantize_gradient_tensor(g.contiguous(), 8, key)
    assert not torch.equal(fused, nchw)  # other noise bits, the same grid
    x = 3 * torch.randn(4, 8, 5, 5, generator=generator)
    alpha = torch.tensor(2.0, requires_grad=True)
    pact_nhwc = functional.pact(x.contiguous(memory_format=torch.channels_last), alpha, 4)
    assert pact_nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(pact_nhwc, functional.pact(x, alpha, 4))


@needs_compiler
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed, scale", [(False, 1.0), (False, 0.1), (True, 1.0)])
def test_native_dorefa_activation_gives_the_tensor_paths_bits(
    monkeypatch, fresh_kernel, bits, signed, scale
):
    quantize = functional.dorefa_activation_signed if signed else functional.dorefa_activation
    x = 1.5 * torch.randn(8, 16, 9, 9, generator=torch.Generator().manual_seed(bits))
    # NaN kept; both ends, signed zeros and a value halfway between two levels exact
    n = functional.symmetric_levels(bits) if signed else functional.levels(bits)
    x[0, 0, 0, :6] = torch.tensor([float("nan"), -0.0, 0.0, 1.0, -1.0, 0.5 / n]) / scale
    x.requires_grad_()
    calls = count_native_calls(monkeypatch, "clip_to_grid")
    fused = quantize(x, bits, scale)
    assert calls == [1] and fused.requires_grad
    reference = tensor_path(monkeypatch, quantize, x, bits, scale)
    assert len(calls) == 1
    assert torch.equal(fused.nan_to_num(), reference.nan_to_num())
    assert fused.isnan().sum() == 1
    nhwc = quantize(x.detach().contiguous(memory_format=torch.channels_last), bits, scale)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc.nan_to_num(), reference.nan_to_num())
    # the backward is the tensor path's either way: the clip's gradient on the saved input
    (grad,) = torch.autograd.grad(fused.nan_to_num().sum(), x)
    low = -1.0 if signed else 0.0
    inside = (x * scale > low) & (x * scale < 1)
    assert torch.equal(grad[~x.isnan()], (inside.float() * scale)[~x.isnan()])


@needs_compiler
@pytest.mark.parametrize("bits, signed", [(2, False), (4, False), (4, True), (8, True)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_native_lsq_gives_the_tensor_paths_bits_forward_and_backward(
    monkeypatch, fresh_kernel, bits, signed, layout
):
    qn, qp = functional.lsq_range(bits, signed)
    generator = torch.Generator().manual_seed(bits)
    x = 2 * torch.randn(8, 16, 9, 9, generator=generator)
    step_value = 0.37
    # NaN kept; the range's ends, a half step (ties round to even) and signed zeros exact
    ends = torch.tensor([float("nan"), -qn, qp, 0.5, 1.5, -0.0, 0.0, qp + 3]) * step_value
    x[0, 0, 0, :8] = ends
    x = x.contiguous(memory_format=layout)
    upstream = torch.randn(x.shape, generator=generator).contiguous(memory_format=layout)

    def forward_backward():
        leaf = x.clone().requires_grad_()
        step = torch.tensor(step_value, requires_grad=True)
        y = functional.lsq(leaf, step, bits, signed, grad_scale=0.25)
        y.nan_to_num().backward(upstream)
        return y, leaf.grad, step.grad

    calls = count_native_calls(monkeypatch, "lsq_forward")
    backward_calls = count_native_calls(monkeypatch, "lsq_backward")
    fused = forward_backward()
    assert calls == [1] and backward_calls == [1]
    reference = tensor_path(monkeypatch, forward_backward)
    assert calls == [1] and backward_calls == [1]
    assert fused[0].isnan().sum() == 1
    assert fused[0].is_contiguous(memory_format=layout)
    for native_value, tensor_value in zip(fused, reference, strict=True):
        assert torch.equal(native_value.nan_to_num(), tensor_value.nan_to_num())


@needs_compiler
def test_lsq_with_a_step_per_channel_or_mixed_layouts_keeps_the_tensor_path(
    monkeypatch, fresh_kernel
):
    calls = count_native_calls(monkeypatch, "lsq_forward")
    backward_calls = count_native_calls(monkeypatch, "lsq_backward")
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    per_channel = torch.full((6, 1, 1, 1), 0.1, requires_grad=True)
    functional.lsq(w, per_channel, 4, signed=True).sum().backward()
    assert calls == [] and backward_calls == []
    # an NCHW upstream gradient for a channels-last input: the tensor path's backward
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    step = torch.tensor(0.2, requires_grad=True)
    y = functional.lsq(x, step, 4)
    y.backward(torch.ones(2, 3, 4, 5))
    assert calls == [1] and backward_calls == []
    reference_x = x.detach().clone().requires_grad_()
    reference_step = torch.tensor(0.2, requires_grad=True)
    tensor_path(
        monkeypatch,
        lambda: functional.lsq(reference_x, reference_step, 4).backward(torch.ones(2, 3, 4, 5)),
    )
    assert torch.equal(x.grad, reference_x.grad) and torch.equal(step.grad, reference_step.grad)
