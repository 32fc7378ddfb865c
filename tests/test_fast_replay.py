"""The Score-CAM family's optimised replays (captum_xcam/_utils/replay.py): batch
norm folded into a copy of the convolution before it, the memory format chosen by
timing, no autograd; the maps equal the exact replays' (scoring through the model
as given) to float rounding, and the model is left untouched."""
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from captum_xcam import LayerIntegratedScoreCam, LayerScoreCam, LayerSmoothedScoreCam
from captum_xcam._utils import replay as replay_module
from captum_xcam._utils.replay import Replay, fast_replay
from tests.conftest import make_images, make_tiny, randomise

TARGETS = [1, 7]
FAMILY = [
    (LayerScoreCam, {}),
    (LayerSmoothedScoreCam, {"num_samples": 2, "stddev": 0.1}),
    (LayerIntegratedScoreCam, {"num_samples": 2}),
]


def relative_difference(a, b):
    return float((a - b).abs().max() / b.abs().max())


class BatchNormCalls:
    r"""Counts the batch norms that run (torch.nn.functional.batch_norm)."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        real = F.batch_norm

        def counted(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(F, "batch_norm", counted)


@pytest.mark.parametrize("method, kwargs", FAMILY, ids=lambda v: getattr(v, "__name__", ""))
def test_optimised_replays_give_the_exact_maps(method, kwargs):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    cam = method(model, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the replay is built
        fast = cam.attribute(x, target=TARGETS, **kwargs)
    exact = cam.attribute(x, target=TARGETS, optimized_replays=False, **kwargs)
    torch.testing.assert_close(fast, exact, rtol=1e-9, atol=1e-12)


def test_no_batch_norm_runs_in_the_replays(monkeypatch):
    model, layer = make_tiny()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    calls = BatchNormCalls(monkeypatch)
    x = make_images(n=2, size=16)
    LayerScoreCam(model, layer).attribute(x, target=TARGETS, perturbations_per_eval=1)
    # The layer's grid, then the check of the replay against the model: two
    # forward passes of the model. Nothing in the replays.
    assert calls.count == 2 * norms
    calls.count = 0
    LayerScoreCam(model, layer).attribute(x, target=TARGETS, perturbations_per_eval=1,
                                          optimized_replays=False)
    assert calls.count >= 5 * norms  # the grid, the reference, every replay


def test_the_model_is_left_untouched_and_its_hooks_still_run():
    model, layer = make_tiny()
    modules = dict(model.named_modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = {name: set(m.__dict__) for name, m in modules.items()}
    hooked = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    hooked.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    x = make_images(n=2, size=16)
    fast = LayerScoreCam(model, layer).attribute(x, target=TARGETS)
    rows_fast, seen[:] = sum(seen), []
    exact = LayerScoreCam(model, layer).attribute(x, target=TARGETS, optimized_replays=False)
    torch.testing.assert_close(fast, exact, rtol=1e-9, atol=1e-12)
    # The hooked norm is not folded: it runs in every replay, as with the exact
    # ones, and in the check of the replay (the model, then the replay: in float64
    # in one memory format only), which the exact replays skip.
    assert rows_fast == sum(seen) + 2 * len(x)
    assert dict(model.named_modules()) == modules
    assert {name: set(m.__dict__) for name, m in modules.items()} == attributes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_forward_function_that_calls_the_model_is_folded_too(monkeypatch):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    softmax = LayerScoreCam(lambda inputs: model(inputs).softmax(1), layer)
    calls = BatchNormCalls(monkeypatch)
    folded = softmax.attribute(x, target=TARGETS)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert calls.count <= 2 * norms
    exact = softmax.attribute(x, target=TARGETS, optimized_replays=False)
    torch.testing.assert_close(folded, exact, rtol=1e-9, atol=1e-12)


class Untraceable(nn.Module):
    r"""BatchNorm behind a branch on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        a = self.features(x)
        if a.sum() > -1e9:
            a = a + 0
        return self.fc(a.mean((2, 3)))


class FlatInput(nn.Module):
    r"""Reads its input with ``view``, which channels-last inputs refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        a = self.features(x)
        return self.fc(x.view(len(x), -1)) + a.mean((1, 2, 3))[:, None]


def test_an_untraceable_model_warns_and_gives_the_exact_maps():
    model = randomise(Untraceable()).double().eval()
    x = make_images(n=2, size=8)
    cam = LayerScoreCam(model, model.features)
    with pytest.warns(UserWarning, match="not folded.*torch.fx cannot trace it"):
        fast = cam.attribute(x, target=TARGETS)
    torch.testing.assert_close(fast, cam.attribute(x, target=TARGETS, optimized_replays=False),
                               rtol=1e-9, atol=1e-12)


def test_a_model_that_refuses_channels_last_inputs_is_replayed_as_given():
    model = FlatInput().eval()  # float32: channels-last is a candidate
    x = make_images(n=2, size=8).float()
    cam = LayerScoreCam(model, model.features)
    with pytest.warns(UserWarning, match="channels-last.*fails.*model itself scores"):
        fast = cam.attribute(x, target=TARGETS)
    torch.testing.assert_close(fast, cam.attribute(x, target=TARGETS, optimized_replays=False),
                               rtol=0, atol=0)


class SlowIn(nn.Module):
    r"""A convolutional model that sleeps on inputs of one memory format."""

    def __init__(self, slow_format) -> None:
        super().__init__()
        self.slow_format = slow_format
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.formats = []

    def forward(self, x):
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.formats.append(layout)
        if layout is self.slow_format:
            time.sleep(0.02)
        return torch.relu(self.conv(x)).mean((2, 3))


@pytest.mark.parametrize("slow", [torch.channels_last, torch.contiguous_format])
def test_the_memory_format_is_the_one_measured_faster(slow):
    model = SlowIn(slow)
    x = torch.rand(2, 3, 8, 8)
    replay = fast_replay(model, model.conv, (x,), (), "Score-CAM")
    model.formats.clear()
    for _ in range(2 * replay_module.TRIALS + 3):
        replay((x,), ())
    tried = 2 * replay_module.TRIALS
    trials, kept = model.formats[:tried], model.formats[tried:]
    assert set(trials) == {torch.channels_last, torch.contiguous_format}
    assert kept and all(layout is not slow for layout in kept)


def test_no_format_is_tried_without_convolutions_or_in_float64():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    replay = fast_replay(mlp, mlp[1], (torch.rand(1, 3, 2, 2),), (), "Score-CAM")
    assert replay.formats == (torch.preserve_format,) and replay.changes == ()
    model, layer = make_tiny()  # float64: oneDNN's channels-last does not apply
    assert fast_replay(model, layer, (make_images(1, 16),), (), "Score-CAM").formats == (
        torch.preserve_format,)
    assert Replay(mlp).chosen is torch.preserve_format


def test_resnet18_in_float32_agrees_with_the_exact_replays_to_float_rounding():
    r"""A torchvision ResNet-18 with lively batch norm statistics, in float32:
    with the peers' softmax over the channels the maps agree within 1e-5; the
    raw score increases (differences of nearby outputs) are no further from a
    float64 computation than the exact replays' are."""
    torch.manual_seed(0)
    model = randomise(torchvision.models.resnet18(num_classes=10)).eval()
    x = make_images(n=1, size=64).float()
    cam = LayerScoreCam(model, model.layer4)
    fast = cam.attribute(x, target=3, channel_softmax=True)
    exact = cam.attribute(x, target=3, channel_softmax=True, optimized_replays=False)
    assert relative_difference(fast, exact) <= 1e-5
    fast, exact = cam.attribute(x, target=3), cam.attribute(x, target=3, optimized_replays=False)
    model64 = model.double()
    truth = LayerScoreCam(model64, model64.layer4).attribute(
        x.double(), target=3, optimized_replays=False).float()
    assert relative_difference(fast, truth) <= 2 * relative_difference(exact, truth) + 1e-6
