"""metrics.report: the shared per-image metrics and the comparison table."""
import pytest
import torch

from captum_xcam import LayerXGradCam
from captum_xcam.data import make_synthetic
from captum_xcam.metrics import (
    boxes_to_masks,
    confidence_change,
    deletion,
    energy_pointing_game,
    insertion,
    pointing_game,
)
from captum_xcam.metrics.report import COLUMNS, map_metrics, markdown_table, mean_rows
from captum_xcam.models import load_pretrained


@pytest.fixture(scope="module")
def setting():
    model = load_pretrained()
    data = make_synthetic(4, seed=7)
    maps = LayerXGradCam(model, model.cam_layer).attribute(
        data.images, target=data.labels, relu_attributions=True)
    return model, data, maps


def test_map_metrics_are_the_metric_functions(setting):
    model, data, maps = setting
    row = map_metrics(model, data.images, maps, data.labels, masks=data.masks,
                      boxes=data.boxes, tolerance=3, step=512)
    assert set(row) == {"pointing", "energy", "average_drop", "increase", "deletion",
                        "insertion", "deletion_curve", "insertion_curve"}
    size = data.images.shape[2:]
    expected = {
        "pointing": pointing_game(maps, data.masks, tolerance=3).float(),
        "energy": energy_pointing_game(maps, boxes_to_masks(data.boxes, size)),
        "average_drop": confidence_change(model, data.images, maps, data.labels).drop,
        "deletion": deletion(model, data.images, maps, data.labels, step=512).auc,
        "insertion": insertion(model, data.images, maps, data.labels, step=512).auc,
    }
    for key, value in expected.items():
        assert torch.allclose(row[key], value.float(), atol=1e-6), key
    assert row["deletion_curve"].shape == (4, 4096 // 512 + 1)


def test_without_ground_truth_there_is_no_localisation(setting):
    model, data, maps = setting
    row = map_metrics(model, data.images, maps, data.labels, step=1024)
    assert "pointing" not in row and "energy" not in row and "insertion" in row
    with_masks = map_metrics(model, data.images, maps, data.labels, masks=data.masks,
                             step=1024)
    assert torch.allclose(with_masks["energy"], energy_pointing_game(maps, data.masks))


def test_markdown_table_has_the_used_columns_in_order():
    rows = mean_rows({
        "A": {"insertion": torch.tensor([0.5, 1.0]), "pointing": torch.tensor([1.0, 0.0]),
              "insertion_curve": torch.ones(2, 3)},
        "B": {"insertion": torch.tensor([0.25])},
    })
    assert rows == {"A": {"insertion": 0.75, "pointing": 0.5}, "B": {"insertion": 0.25}}
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| Method | Pointing game (%) ↑ | Insertion AUC ↑ |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2:] == ["| A | 50.0 | 0.750 |", "| B | — | 0.250 |"]
    assert list(COLUMNS)[-1] == "ms_per_image"
