"""YOLOv3-tiny: the darknet layout, decoding, target assignment, the loss, NMS, quantization."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.detection.decode import decode_heads, postprocess
from lowbit.detection.loss import YOLOLoss, shape_iou
from lowbit.models.yolov3_tiny import DARKNET_ANCHORS, YOLOv3Tiny
from lowbit.quant import quantize_model
from lowbit.quant.fold import fold_bn
from lowbit.quant.modules import DoReFaSignedActivation, PACTSymmetricActivation, QuantizedLayer


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_count_is_darknets_at_80_classes():
    assert trainable_parameters(YOLOv3Tiny(num_classes=80)) == 8_852_366


def test_layers_follow_the_darknet_cfg():
    model = YOLOv3Tiny(num_classes=80)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Registration order: backbone, head 1, the lateral 1x1, head 2.
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (16, 3),
        (32, 3),
        (64, 3),
        (128, 3),
        (256, 3),
        (512, 3),
        (1024, 3),
        (256, 1),
        (512, 3),
        (255, 1),
        (128, 1),
        (256, 3),
        (255, 1),
    ]
    output_convs = [model.get_submodule(name) for name in model.last_layers]
    assert all(conv.bias is not None for conv in output_convs)  # linear, with a bias
    assert all(conv.bias is None for conv in convs if conv not in output_convs)  # BN instead
    assert convs[11].in_channels == 128 + 256  # upsampled lateral + the backbone's 256 layer
    leaky = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 11 and all(m.negative_slope == 0.1 for m in leaky)


@pytest.mark.parametrize("size", [64, 96])
def test_heads_tile_the_input_at_strides_32_and_16(size):
    model = YOLOv3Tiny(num_classes=3, input_size=size).eval()
    with torch.no_grad():
        large, small = model(torch.rand(2, 3, size, size))
    assert large.shape == (2, 3 * 8, size // 32, size // 32)
    assert small.shape == (2, 3 * 8, size // 16, size // 16)


def test_anchors_scale_with_the_input_size():
    model = YOLOv3Tiny(num_classes=1, input_size=832)
    assert torch.equal(model.anchors, torch.tensor(DARKNET_ANCHORS, dtype=torch.float32) * 2)
    # The coarse head predicts the three largest anchors (the cfg's mask 3,4,5).
    assert torch.equal(model.head_anchors()[0], model.anchors[3:])
    with pytest.raises(ValueError, match="multiple of 32"):
        YOLOv3Tiny(input_size=100)


def test_objectness_starts_at_the_prior():
    model = YOLOv3Tiny(num_classes=2, input_size=64).eval()
    bias = model.head_small[1].bias.view(3, 7)
    assert torch.allclose(bias[:, 4].sigmoid(), torch.full((3,), 0.01))
    assert torch.all(bias[:, :4] != math.log(0.01 / 0.99))  # only the objectness entry


def raw_heads(model: YOLOv3Tiny, batch: int = 1) -> list[torch.Tensor]:
    size = model.input_size
    channels = 3 * (5 + model.num_classes)
    return [torch.zeros(batch, channels, size // s, size // s) for s in model.strides]


def test_decoding_of_zero_outputs_is_the_anchor_in_the_cell_centre():
    model = YOLOv3Tiny(num_classes=2, input_size=64)
    predictions = decode_heads(raw_heads(model), model.head_anchors(), model.strides)
    # Coarse head: 2x2 cells of stride 32, anchors 3-5; first prediction is anchor 3, cell (0,0).
    anchor = model.anchors[3]
    centre = torch.tensor([16.0, 16.0])
    expected = torch.cat([centre - anchor / 2, centre + anchor / 2])
    assert torch.allclose(predictions.boxes[0, 0], expected)
    # Fine head, anchor 0, cell row 1 column 2 (stride 16): centre (40, 24).
    fine_start = 3 * 2 * 2
    index = fine_start + 0 * 16 + 1 * 4 + 2
    centre = torch.tensor([40.0, 24.0])
    anchor = model.anchors[0]
    assert torch.allclose(
        predictions.boxes[0, index], torch.cat([centre - anchor / 2, centre + anchor / 2])
    )


def encode(
    model: YOLOv3Tiny, box: torch.Tensor, label: int, anchor_index: int, confidence: float = 8.0
) -> list[torch.Tensor]:
    """Raw head maps that predict exactly ``box`` with ``anchor_index`` and nothing else."""
    outputs = raw_heads(model)
    for output in outputs:
        output.view(1, 3, 5 + model.num_classes, *output.shape[-2:])[:, :, 4] = -confidence
    head = 0 if anchor_index >= 3 else 1
    stride = model.strides[head]
    slot = anchor_index - (3 if head == 0 else 0)
    raw = outputs[head].view(1, 3, 5 + model.num_classes, *outputs[head].shape[-2:])
    centre = (box[:2] + box[2:]) / 2
    size = box[2:] - box[:2]
    col, row = int(centre[0] // stride), int(centre[1] // stride)
    offset = centre / stride - torch.tensor([col, row])
    raw[0, slot, 0, row, col] = torch.logit(offset[0])
    raw[0, slot, 1, row, col] = torch.logit(offset[1])
    raw[0, slot, 2:4, row, col] = torch.log(size / model.anchors[anchor_index])
    raw[0, slot, 4, row, col] = confidence
    raw[0, slot, 5:, row, col] = -confidence
    raw[0, slot, 5 + label, row, col] = confidence
    return outputs


def test_loss_is_lowest_when_the_best_iou_anchor_predicts_the_box():
    model = YOLOv3Tiny(num_classes=3, input_size=128)
    loss = YOLOLoss(model.head_anchors(), model.strides, num_classes=3)
    box = torch.tensor([30.0, 40.0, 30.0 + 11.4, 40.0 + 17.9])  # anchor 2's shape at 128
    best = int(shape_iou((box[2:] - box[:2])[None], model.anchors).argmax())
    assert best == 2
    target = [{"boxes": box[None], "labels": torch.tensor([1])}]
    right = loss(encode(model, box, 1, anchor_index=best), target)
    wrong_anchor = loss(encode(model, box, 1, anchor_index=4), target)
    wrong_class = loss(encode(model, box, 2, anchor_index=best), target)
    assert right.box < 1e-4 and right.classes < 0.01 and right.objectness < 0.2
    assert right.assigned == 1
    assert wrong_anchor.total > right.total + 1 and wrong_class.classes > 5


def test_predictions_overlapping_a_box_are_ignored_not_pushed_down():
    model = YOLOv3Tiny(num_classes=1, input_size=64)
    loss = YOLOLoss(model.head_anchors(), model.strides, num_classes=1, ignore_iou=0.5)
    box = torch.tensor([[8.0, 8.0, 56.0, 56.0]])
    decoded = decode_heads(raw_heads(model), model.head_anchors(), model.strides).boxes
    boxes = decoded.view(-1, 4)
    ignored = loss.ignored(torch.cat([boxes, box]).view(1, -1, 4), torch.tensor([0]), box, 1)
    assert ignored[0, -1]  # the box itself overlaps itself
    assert not ignored.all()


def test_a_few_steps_on_one_batch_lower_the_loss():
    torch.manual_seed(0)
    model = YOLOv3Tiny(num_classes=2, input_size=64)
    loss = YOLOLoss(model.head_anchors(), model.strides, num_classes=2)
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([0])},
        {
            "boxes": torch.tensor([[20.0, 20.0, 60.0, 50.0], [2.0, 2.0, 12.0, 12.0]]),
            "labels": torch.tensor([1, 0]),
        },
    ]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(25):
        terms = loss(model(images), targets)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        first = first if first is not None else terms.total.item()
    assert terms.total.item() < 0.5 * first


def test_images_without_objects_still_give_a_finite_loss():
    model = YOLOv3Tiny(num_classes=2, input_size=64)
    loss = YOLOLoss(model.head_anchors(), model.strides, num_classes=2)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    terms = loss(model(torch.rand(1, 3, 64, 64)), empty)
    assert torch.isfinite(terms.total) and terms.box == 0 and terms.assigned == 0


def test_postprocess_keeps_one_of_two_duplicates_and_applies_the_thresholds():
    model = YOLOv3Tiny(num_classes=2, input_size=64)
    box = torch.tensor([10.0, 10.0, 50.0, 54.0])
    outputs = encode(model, box, 1, anchor_index=4)
    predictions = decode_heads(outputs, model.head_anchors(), model.strides)
    duplicate = predictions.boxes.clone()
    predictions.boxes = torch.cat([predictions.boxes, duplicate + 1], 1)
    predictions.objectness = torch.cat([predictions.objectness, predictions.objectness], 1)
    predictions.class_logits = torch.cat([predictions.class_logits] * 2, 1)
    found = postprocess(predictions, score_threshold=0.5, image_size=64)[0]
    assert len(found["boxes"]) == 1 and found["labels"].tolist() == [1]
    assert torch.allclose(found["boxes"][0], box, atol=1e-3)
    assert found["scores"][0] > 0.99
    assert len(postprocess(predictions, score_threshold=0.0, max_detections=5)[0]["boxes"]) == 5


@pytest.mark.parametrize(
    "quantizer, signed_type",
    [
        ("dorefa", DoReFaSignedActivation),
        ("pact", PACTSymmetricActivation),
        ("pact_symmetric", PACTSymmetricActivation),
    ],
)
def test_quantized_yolo_has_8_bit_outputs_and_signed_inputs_after_leaky_relu(
    quantizer, signed_type
):
    model = quantize_model(
        YOLOv3Tiny(num_classes=2, input_size=64),
        quantizer=quantizer,
        wbits=4,
        abits=4,
        gbits=32,
        first_layer_bits=8,
        last_layer_bits=8,
        input_shape=(3, 64, 64),
    )
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert len(layers) == 13
    for name in model.last_layers:
        assert layers[name].wbits == 8 and layers[name].abits == 8
    inner = [
        m
        for name, m in layers.items()
        if name not in model.last_layers and name != "backbone_to_route.0.0"
    ]
    assert all(m.wbits == 4 and m.abits == 4 for m in inner)
    # Every input after the image follows a leaky ReLU (or its max-pool/upsample): all signed.
    assert all(isinstance(m.input_quantizer, signed_type) for m in inner)


def test_batchnorm_folds_into_yolo_to_1e_5():
    torch.manual_seed(0)
    model = YOLOv3Tiny(num_classes=2, input_size=64)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.2, 2.0)
                module.weight.uniform_(0.5, 1.5)
    model.eval()
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for expected, actual in zip(model(x), folded(x)):
            assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
