"""lowbit.export: bit-packed checkpoints restore the fake-quant model exactly, at their size."""

from __future__ import annotations

import pytest
import torch

from lowbit.export.packing import (
    header_bytes,
    load_packed,
    pack_codes,
    payload_bytes,
    save_packed,
    unpack_codes,
)
from lowbit.measure import count_bops, count_macs
from lowbit.measure.size import size_limit_bytes
from lowbit.models import NIN
from lowbit.quant import quantize_model

SHAPE = (3, 32, 32)
METHODS = [
    ("dorefa", {}),
    ("pact", {}),  # DoReFa weights, as in the PACT paper
    ("pact", {"weight_quantizer": "channel_wise_abs_max"}),
]


def quantized_nin(quantizer: str, bits: int, seed: int, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = quantize_model(
        NIN(), quantizer=quantizer, wbits=bits, abits=bits, input_shape=SHAPE, **options
    )
    with torch.no_grad():  # trained-looking state, so that loading it is what makes outputs equal
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        for name, parameter in model.named_parameters():
            if name.endswith("alpha"):
                parameter.uniform_(0.5, 4.0)
    return model.eval()


def test_codes_pack_at_their_bit_width_and_unpack_unchanged():
    # 2-bit codes 1, 2, 3 -> bits 10 01 11 from the least significant end: 0b111001
    assert pack_codes(torch.tensor([1, 2, 3]), 2).tolist() == [0b111001]
    generator = torch.Generator().manual_seed(0)
    for bits in range(1, 17):
        codes = torch.randint(0, 1 << bits, (1001,), generator=generator)
        packed = pack_codes(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
        assert torch.equal(unpack_codes(packed, bits, 1001), codes)
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([4]), 2)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("quantizer,options", METHODS, ids=["dorefa", "pact", "pact-absmax"])
def test_loaded_model_computes_exactly_what_the_saved_one_did(tmp_path, quantizer, options, bits):
    saved = quantized_nin(quantizer, bits, seed=0, **options)
    path = save_packed(saved, tmp_path / "model.safetensors")
    restored = load_packed(path, quantized_nin(quantizer, bits, seed=1, **options))
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(restored(x), saved(x))
        for before, after in zip(saved.modules(), restored.modules()):
            if hasattr(before, "weight_quantizer"):
                assert torch.equal(after.quantized_weight(), before.quantized_weight())


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("quantizer,options", METHODS, ids=["dorefa", "pact", "pact-absmax"])
@pytest.mark.parametrize("batchnorm", ["affine", "keep"])
def test_file_is_the_bits_limit_plus_what_the_outputs_need(
    tmp_path, quantizer, options, bits, batchnorm
):
    """Payload = params x bits / 8 (+ per-channel ranges) (+ BatchNorm statistics if kept)."""
    model = quantized_nin(quantizer, bits, seed=0, **options)
    path = save_packed(model, tmp_path / "model.safetensors", batchnorm=batchnorm)
    limit = size_limit_bytes(model)
    # Buffers a checkpoint holds (BatchNorm statistics, quantizer state); non-persistent ones
    # (the gradient noise's draw counters) are not part of the model's state.
    state = model.state_dict()
    statistics = sum(
        b.numel() * b.element_size() for name, b in model.named_buffers() if name in state
    )
    channel_ranges = (
        4 * sum(m.out_channels for m in model.modules() if getattr(m, "wbits", 32) < 32)
        if options
        else 0
    )
    packed_tensors = sum(1 for m in model.modules() if getattr(m, "wbits", 32) < 32)
    expected = limit + channel_ranges + (statistics if batchnorm == "keep" else 0)
    # Each packed tensor rounds its bits up to whole bytes; nothing else may be there.
    assert expected <= payload_bytes(path) <= expected + packed_tensors
    assert path.stat().st_size == payload_bytes(path) + header_bytes(path)
    assert header_bytes(path) < 16_000  # names, shapes and the JSON metadata
    if batchnorm == "affine" and not options:  # the target: within 2% of the limit
        assert payload_bytes(path) <= 1.02 * limit


@pytest.mark.parametrize(
    "build",
    [lambda: quantized_nin("dorefa", 4, seed=0), lambda: quantized_nin("pact", 2, seed=0)],
    ids=["dorefa-w4", "pact-w2"],
)
def test_batchnorm_stored_as_its_affine_map_restores_outputs_bit_for_bit(tmp_path, build):
    saved = build()
    path = save_packed(saved, tmp_path / "model.safetensors")  # batchnorm="affine", the default
    restored = load_packed(path, build().train())  # training state must not leak in
    restored.eval()
    for batch in (1, 5):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch)) * 3
        with torch.no_grad():
            assert torch.equal(restored(x), saved(x))
    bn = restored.features[0][1]
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var + bn.eps == 1)


def test_mismatched_model_and_inexact_forms_are_refused(tmp_path):
    path = save_packed(quantized_nin("dorefa", 4, seed=0), tmp_path / "w4.safetensors")
    with pytest.raises(ValueError, match="packed at 4 bits"):
        load_packed(path, quantized_nin("dorefa", 2, seed=0))
    with pytest.raises(ValueError, match="not the model's quantized weights"):
        load_packed(path, NIN())
    with pytest.raises(NotImplementedError, match="1 bits"):
        save_packed(quantized_nin("dorefa", 1, seed=0), tmp_path / "w1.safetensors")


def test_bops_weigh_each_layers_macs_by_its_bits():
    model = quantize_model(NIN(), quantizer="dorefa", wbits=2, abits=4, input_shape=SHAPE)
    macs, bops = count_macs(model, SHAPE), count_bops(model, SHAPE)
    names = list(macs)
    assert bops[names[0]] == macs[names[0]] * 8 * 32  # 8-bit stem, float image input
    assert bops[names[1]] == macs[names[1]] * 2 * 4
    assert bops[names[-1]] == macs[names[-1]] * 8 * 8
    assert sum(count_bops(NIN(), SHAPE).values()) == 222_486_528 * 32 * 32
