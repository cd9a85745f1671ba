"""The models table (docs/configuration.md) states counts that the code measures: each row's
parameters and MACs are recounted here from the built model (lowbit.measure), so the table
cannot drift."""

from __future__ import annotations

import pytest
from conftest import ROOT, nin_macs

from lowbit.measure import count_macs
from lowbit.models import NIN
from lowbit.models.mobilenetv3 import MobileNetV3
from lowbit.models.yolov3_tiny import YOLOv3Tiny


def models_table() -> dict[str, list[str]]:
    """The "## Models" table of docs/configuration.md: each row's cells, by its `model=` name."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## Models", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in section.splitlines()[2:]:  # below the header and its rule
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def millions(count: int) -> str:
    return f"{count / 1e6:.1f} M"


# model name -> (model for the parameter column, model and input for the MACs column)
ROWS = {
    "nin": (lambda: NIN(num_classes=10), lambda: (NIN(num_classes=10), (3, 32, 32))),
    "mobilenetv3_small": (
        lambda: MobileNetV3("small", num_classes=10),
        lambda: (MobileNetV3("small", num_classes=10), (3, 32, 32)),
    ),
    "mobilenetv3_large": (
        lambda: MobileNetV3("large", num_classes=10),
        lambda: (MobileNetV3("large", num_classes=10), (3, 32, 32)),
    ),
    "yolov3_tiny": (
        lambda: YOLOv3Tiny(num_classes=80),
        lambda: (YOLOv3Tiny(num_classes=5, input_size=128), (3, 128, 128)),
    ),
}


def test_the_table_lists_every_model_config():
    assert set(models_table()) == {path.stem for path in (ROOT / "conf" / "model").glob("*.yaml")}
    assert set(ROWS) == set(models_table())


@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_rows_parameters_and_macs_are_what_the_model_counts(name):
    cells = models_table()[name]
    param_model, mac_model = ROWS[name]
    assert cells[2].split()[0] == f"{params(param_model()):,}"
    model, input_shape = mac_model()
    assert cells[3].startswith(millions(sum(count_macs(model, input_shape).values())))


def test_nin_macs_from_its_stage_table_match_the_counted_ones():
    assert sum(count_macs(NIN(num_classes=10), (3, 32, 32)).values()) == nin_macs()
    assert models_table()["nin"][3] == millions(nin_macs())
