"""The SmallCNN and its shipped weights."""
import pytest
import torch

from captum_xcam.data import make_synthetic
from captum_xcam.models import SmallCNN, load_pretrained
from captum_xcam.models.small_cnn import WEIGHTS_FILE


def test_shipped_model_is_accurate_on_a_fresh_test_split():
    # Seed 12345 is used by neither the training (0) nor the script's test split (1).
    data = make_synthetic(400, seed=12345)
    model = load_pretrained()
    assert not model.training
    with torch.no_grad():
        accuracy = (model(data.images).argmax(1) == data.labels).float().mean().item()
    assert accuracy > 0.95


def test_layers_shapes_and_cam_layer():
    model = SmallCNN().eval()
    seen = {}
    for name in ("block3", "block4"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o.shape)
        )
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 4)
    assert seen["block4"] == (2, 64, 8, 8)
    assert model.cam_layer is model.block4
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len({id(m) for m in relus}) == 5


def test_weights_file_is_small_and_loads_safely():
    assert WEIGHTS_FILE.stat().st_size < 1_000_000
    state = torch.load(WEIGHTS_FILE, weights_only=True)
    assert set(state) == set(SmallCNN().state_dict())


def test_load_pretrained_device_and_path(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(SmallCNN().state_dict(), path)
    model = load_pretrained(device="cpu", path=path)
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(FileNotFoundError):
        load_pretrained(path=tmp_path / "missing.pt")



def test_head_replaces_the_model_after_the_cam_layer_in_shapley_sampling():
    # The same permutations (same seed) through the whole model with the layer
    # substituted and through model.head give the same channel Shapley values.
    from captum_xcam.metrics import channel_shapley_values

    model = load_pretrained()
    data = make_synthetic(2, seed=5)
    values = []
    for head in (None, model.head):
        torch.manual_seed(0)
        values.append(channel_shapley_values(
            model, model.cam_layer, data.images, target=data.labels, n_samples=2,
            perturbations_per_eval=65, layer_forward_func=head,
        ))
    torch.testing.assert_close(values[0], values[1], rtol=1e-4, atol=1e-5)
    assert values[0].shape == (2, 64)
