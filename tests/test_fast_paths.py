"""How the methods run, not only what they return: the part of the model before
the layer runs once where the model can be split there (and the whole model
is re-run, with the same results, where it cannot); the gradient methods build
no graph before the layer; Score-CAM's replays are bounded, skip constant
channels and do not synchronise with the host per chunk."""

import math
import warnings

import pytest
import torch
from torch import nn

from captum_xcam import (
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
    WholeModelReplayWarning,
)
from captum_xcam._utils.layer_tail import ReplayedTail, TracedTail, layer_tail
from conftest import make_images, make_tiny, randomise
from reference import implied_weights, output_with_layer

TARGETS = [1, 7]


class CallCounter:
    r"""A forward hook counting calls and the examples they carry."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        self.rows += len(inputs[0])


def counted(module: nn.Module) -> CallCounter:
    counter = CallCounter()
    module.register_forward_hook(counter)
    return counter


def test_ablation_replays_one_chunk_at_a_time_after_the_layer():
    model, layer = make_tiny()
    before, after = counted(model.stem), counted(model.fc)
    LayerAblationCam(model, layer).attribute(
        make_images(n=2, size=16), target=TARGETS, perturbations_per_eval=5
    )
    assert (before.calls, before.rows) == (1, 2)
    # The explained rows, then 12 ablations of each image, 5 channels of both per replay.
    assert (after.calls, after.rows) == (1 + math.ceil(12 / 5), 2 + 2 * 12)


class DataDependent(nn.Module):
    r"""A branch on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.tiny = make_tiny()[0]

    def forward(self, x):
        if x.mean() > -1e9:  # always true, but only known at run time
            x = x * 1.0
        return self.tiny(x)


class BatchSizeReadEarly(nn.Module):
    r"""Reads the batch size before the layer, in one of the usual idioms, and
    uses it after (``x.view(bs, -1)``), as EfficientNet-PyTorch does."""

    FORMS = ("x.size(0)", "x.shape[0]", "len(x)", "b, c, h, w = x.shape")

    def __init__(self, form: str = "x.shape[0]") -> None:
        super().__init__()
        self.tiny = make_tiny()[0]
        self.form = form

    def forward(self, x):
        if self.form == "x.size(0)":
            b = x.size(0)
        elif self.form == "len(x)":
            b = len(x)
        elif self.form == "x.shape[0]":
            b = x.shape[0]
        else:
            b, c, h, w = x.shape
        t = self.tiny
        a = t.layer4(t.stem(x))
        return t.fc(t.avgpool(a).view(b, -1))


class BatchMeanBeforeTheLayer(nn.Module):
    r"""A statistic of the whole batch computed before the layer and used
    after it: no replay of some rows can reproduce it."""

    def __init__(self) -> None:
        super().__init__()
        self.tiny = make_tiny()[0]

    def forward(self, x):
        t = self.tiny
        level = x.mean()
        return t.fc(torch.flatten(t.avgpool(t.layer4(t.stem(x))), 1)) + level


class SkipAcross(nn.Module):
    r"""A skip connection across the layer and an additional argument used
    after it: both cross from the part before the layer to the part after."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.layer = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x, scale):
        h = self.stem(x)
        z = self.relu(self.layer(h) + h)
        return self.fc(z.mean((2, 3))) * scale[:, None]


def ablation_brute_force(forward, layer, x, targets):
    r"""(y - y_k) / y for every channel, the whole model re-run each time."""
    with torch.no_grad():
        y = torch.stack([forward(x)[n, t] for n, t in enumerate(targets)])
    weights = []
    for n, t in enumerate(targets):
        row = []
        for k in range(layer_channels(forward, layer, x)):

            def zero_k(module, inp, out, k=k):
                out = out.clone()
                out[:, k] = 0
                return out

            handle = layer.register_forward_hook(zero_k)
            with torch.no_grad():
                y_k = forward(x)[n, t]
            handle.remove()
            row.append((y[n] - y_k) / y[n])
        weights.append(torch.stack(row))
    return torch.stack(weights)


def layer_channels(forward, layer, x):
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    with torch.no_grad():
        forward(x)
    handle.remove()
    return store["a"].shape[1]


def replay_warnings(run):
    r"""The WholeModelReplayWarnings that ``run()`` raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [w for w in caught if issubclass(w.category, WholeModelReplayWarning)]


@pytest.mark.parametrize("form", BatchSizeReadEarly.FORMS)
def test_a_batch_size_read_before_the_layer_keeps_the_tail_only_path(form):
    torch.manual_seed(0)
    model = randomise(BatchSizeReadEarly(form)).double().eval()
    layer = model.tiny.layer4
    x = make_images(n=2, size=16)
    stem, fc = counted(model.tiny.stem), counted(model.tiny.fc)
    maps = {}

    def run():
        maps["ablation"] = LayerAblationCam(model, layer).attribute(
            x, target=TARGETS, attr_dim_summation=False, perturbations_per_eval=7
        )

    assert replay_warnings(run) == []
    # The part before the layer ran once; the tail ran on the explained rows,
    # then on 2 x 12 ablations in chunks of 7: a few forward passes' worth.
    assert (stem.calls, stem.rows) == (1, 2)
    assert (fc.calls, fc.rows) == (1 + math.ceil(12 / 7), 2 + 2 * 12)
    a = layer_tail(model, layer, (x,), None, TARGETS, False).activations
    live = a.flatten(2).abs().sum(2) > 0
    expected = ablation_brute_force(model, layer, x, TARGETS) * live
    torch.testing.assert_close(
        implied_weights(maps["ablation"], a), expected, rtol=1e-9, atol=1e-12
    )


def test_untraceable_models_are_re_run_whole_and_warn_once_with_the_reason():
    torch.manual_seed(0)
    model = randomise(DataDependent()).double().eval()
    layer = model.tiny.layer4
    x = make_images(n=2, size=16)
    stem = counted(model.tiny.stem)
    maps = {}

    def run():
        for _ in range(2):  # a second call, and another method, warn no more
            maps["ablation"] = LayerAblationCam(model, layer).attribute(
                x, target=TARGETS, attr_dim_summation=False, perturbations_per_eval=7
            )
        LayerLiftCam(model, layer).attribute(x, target=TARGETS)

    stem.calls = 0
    caught = replay_warnings(run)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "torch.fx cannot trace it" in message and "control flow" in message
    assert "'tiny.layer4'" in message and "perturbations_per_eval" in message
    assert caught[0].filename == __file__  # attributed to the caller's line
    tail = layer_tail(model, layer, (x,), None, TARGETS, False)
    assert isinstance(tail, ReplayedTail) and "torch.fx" in tail.reason
    stem.calls = 0
    LayerAblationCam(model, layer).attribute(x, target=TARGETS, perturbations_per_eval=7)
    assert stem.calls == 1 + math.ceil(12 / 7)  # every chunk re-ran the whole model
    live = tail.activations.flatten(2).abs().sum(2) > 0
    expected = ablation_brute_force(model, layer, x, TARGETS) * live
    weights = implied_weights(maps["ablation"], tail.activations)
    torch.testing.assert_close(weights, expected, rtol=1e-9, atol=1e-12)


def test_a_batch_statistic_before_the_layer_falls_back_with_the_reason():
    torch.manual_seed(0)
    model = randomise(BatchMeanBeforeTheLayer()).double().eval()
    layer = model.tiny.layer4
    x = make_images(n=1, size=16)  # one example, one ablation per replay: exact
    maps = {}

    def run():
        maps["ablation"] = LayerAblationCam(model, layer).attribute(
            x, target=TARGETS[:1], attr_dim_summation=False, perturbations_per_eval=1
        )

    (caught,) = replay_warnings(run)
    assert "no row per example" in str(caught.message)
    assert "perturbations_per_eval=1" in str(caught.message)
    a = layer_tail(model, layer, (x,), None, TARGETS[:1], False).activations
    live = a.flatten(2).abs().sum(2) > 0
    expected = ablation_brute_force(model, layer, x, TARGETS[:1]) * live
    torch.testing.assert_close(
        implied_weights(maps["ablation"], a), expected, rtol=1e-9, atol=1e-12
    )


def test_hooks_on_the_model_itself_fall_back_with_the_reason():
    model, layer = make_tiny()
    model.register_forward_hook(lambda m, i, o: o * 2)
    x = make_images(n=2, size=16)
    (caught,) = replay_warnings(lambda: LayerAblationCam(model, layer).attribute(x, target=TARGETS))
    assert "hooks" in str(caught.message)


@pytest.mark.parametrize("wrap", ["softmax", "dict", "method"])
def test_forward_functions_that_call_the_model_are_split(wrap):
    model, layer = make_tiny()
    if wrap == "softmax":
        forward = lambda x_: model(x_).softmax(dim=1)  # noqa: E731
    elif wrap == "dict":
        outputs = DictOutputs(model)
        forward = lambda x_: outputs(x_)["logits"]  # noqa: E731
    else:
        forward = model.__call__
    x = make_images(n=2, size=16)
    stem = counted(model.stem)
    assert isinstance(layer_tail(forward, layer, (x,), None, TARGETS, False), TracedTail)
    stem.calls = 0
    maps = {}

    def run():
        maps["ablation"] = LayerAblationCam(forward, layer).attribute(
            x, target=TARGETS, attr_dim_summation=False
        )

    assert replay_warnings(run) == []
    assert stem.calls == 1
    a = layer_tail(forward, layer, (x,), None, TARGETS, False).activations
    live = a.flatten(2).abs().sum(2) > 0
    expected = ablation_brute_force(forward, layer, x, TARGETS) * live
    torch.testing.assert_close(
        implied_weights(maps["ablation"], a), expected, rtol=1e-9, atol=1e-12
    )


class DictOutputs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return {"logits": self.model(x), "features": x}


def test_values_crossing_the_layer_are_replayed_per_example():
    torch.manual_seed(0)
    model = randomise(SkipAcross()).double().eval()
    x = make_images(n=3, size=8)
    scale = torch.tensor([2.0, -0.5, 1.5], dtype=torch.float64)
    targets = [0, 3, 2]
    stem = counted(model.stem)
    tail = layer_tail(model, model.layer, (x,), (scale,), targets, False)
    assert isinstance(tail, TracedTail)
    a = tail.activations
    stem.calls = 0
    maps = LayerAblationCam(model, model.layer).attribute(
        x,
        target=targets,
        additional_forward_args=(scale,),
        attr_dim_summation=False,
        perturbations_per_eval=7,
    )
    assert stem.calls == 1
    live = a.flatten(2).abs().sum(2) > 0
    expected = ablation_brute_force(lambda x_: model(x_, scale), model.layer, x, targets) * live
    torch.testing.assert_close(implied_weights(maps, a), expected, rtol=1e-9, atol=1e-12)
    # LIFT-CAM's weights add up to f(A) - f(0) through the same tail.
    per_channel = LayerLiftCam(model, model.layer).attribute(
        x, target=targets, additional_forward_args=(scale,), attr_dim_summation=False
    )
    zeroed = output_with_layer(lambda x_: model(x_, scale), model.layer, x, torch.zeros_like(a))
    expected_total = tail.target_scores - zeroed[torch.arange(3), targets]
    lift = implied_weights(per_channel, a)
    torch.testing.assert_close(lift.sum(1), expected_total, rtol=1e-9, atol=1e-12)


def test_a_changed_model_is_split_anew():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    cam = LayerAblationCam(model, layer)
    cam.attribute(x, target=TARGETS)
    torch.manual_seed(5)
    model.fc = nn.Linear(12, 10).double()  # a new module after the layer
    changed = cam.attribute(x, target=TARGETS, attr_dim_summation=False)
    whole = LayerAblationCam(lambda x_: model(x_), layer).attribute(
        x, target=TARGETS, attr_dim_summation=False
    )
    torch.testing.assert_close(changed, whole, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cam_class", [LayerXGradCam, LayerGradCamPlusPlus])
def test_gradient_methods_build_no_graph_before_the_layer(cam_class):
    model, layer = make_tiny()
    grad_mode = {}

    def records(where):
        def hook(module, inputs, output):
            grad_mode[where] = output.requires_grad

        return hook

    model.stem.register_forward_hook(records("before"))
    model.fc.register_forward_hook(records("after"))
    calls = counted(model.stem)
    cam_class(model, layer).attribute(make_images(n=2, size=16), target=TARGETS)
    assert grad_mode == {"before": False, "after": True}
    assert calls.calls == 1  # one forward pass
    assert all(p.grad is None for p in model.parameters())


class Spy(nn.Module):
    r"""Records the batches the model is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches = []

    def forward(self, x):
        self.batches.append((len(x), x.is_contiguous(memory_format=torch.channels_last)))
        return self.model(x)


def test_score_cam_replays_are_bounded_per_image_and_skip_constant_channels():
    model, layer = make_tiny()
    with torch.no_grad():  # channels 3 and 7 become all zero after the ReLU
        layer[1].bias[[3, 7]] = -1e6
    spy = Spy(model)
    x = make_images(n=3, size=16)
    a = layer_tail(model, layer, (x,), None, 0, False).activations.flatten(2)
    constant = a.amax(2) == a.amin(2)
    assert constant[:, [3, 7]].all()
    LayerScoreCam(spy, layer).attribute(x, target=[1, 2, 3], perturbations_per_eval=5,
                                        optimized_replays=False)
    explained, reference, *masked = [size for size, _ in spy.batches]
    assert (explained, reference) == (3, 3)
    # 5 channels of each of the 3 images per forward pass, as Captum counts.
    live, rows = int((~constant).sum()), 5 * 3
    assert masked == [rows] * (live // rows) + ([live % rows] if live % rows else [])


def test_score_cam_with_exact_replays_keeps_the_channels_last_memory_format():
    model, layer = make_tiny()
    spy = Spy(model)
    x = make_images(n=2, size=16).contiguous(memory_format=torch.channels_last)
    fast = LayerScoreCam(spy, layer).attribute(x, target=TARGETS, perturbations_per_eval=8,
                                               optimized_replays=False)
    assert all(channels_last for _, channels_last in spy.batches[2:])
    plain = LayerScoreCam(model, layer).attribute(x.contiguous(), target=TARGETS)
    torch.testing.assert_close(fast, plain, rtol=1e-9, atol=1e-12)


class HostSyncCounter:
    r"""Counts the Tensor methods that copy values to the host."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counting(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counting)


@pytest.mark.parametrize("cam_class", [LayerScoreCam, LayerAblationCam])
@pytest.mark.parametrize("target", [[1, 2], torch.tensor([1, 2]), 3])
def test_host_synchronisations_do_not_grow_with_the_chunks(cam_class, target, monkeypatch):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    cam = cam_class(model, layer)
    cam.attribute(x, target=target)  # any one-off work (tracing) done
    counts = []
    for per_eval in (1, 24):
        syncs = HostSyncCounter(monkeypatch)
        cam.attribute(x, target=target, perturbations_per_eval=per_eval)
        counts.append(syncs.count)
        monkeypatch.undo()
    assert counts[0] == counts[1]


def test_score_cam_with_every_channel_constant_replays_nothing():
    # A 1x1 layer map (a small input) makes every channel constant: all
    # weights are known to be 0 and no masked input is built.
    model, layer = make_tiny()
    spy = Spy(model)
    maps = LayerScoreCam(spy, layer).attribute(make_images(n=2, size=3), target=TARGETS)
    assert len(spy.batches) == 2  # the explained examples and the reference only
    assert maps.abs().max() == 0


class TensorConstant(nn.Module):
    r"""Creates a tensor in forward: torch.fx stores such constants on the
    root it traces (``_tensor_constant0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tiny = make_tiny()[0]

    def forward(self, x):
        t = self.tiny
        a = t.layer4(t.stem(x))
        return t.fc(torch.flatten(t.avgpool(a), 1)) * torch.tensor(2.0, dtype=torch.float64)


def test_splitting_adds_nothing_to_the_model():
    torch.manual_seed(0)
    model = randomise(TensorConstant()).double().eval()
    layer = model.tiny.layer4
    x = make_images(n=2, size=16)
    names = {name: set(m.__dict__) for name, m in model.named_modules()}
    tail = layer_tail(model, layer, (x,), None, TARGETS, False)  # outside any attribution
    assert isinstance(tail, TracedTail)
    assert {name: set(m.__dict__) for name, m in model.named_modules()} == names
    maps = LayerAblationCam(model, layer).attribute(x, target=TARGETS, attr_dim_summation=False)
    live = tail.activations.flatten(2).abs().sum(2) > 0
    expected = ablation_brute_force(model, layer, x, TARGETS) * live
    torch.testing.assert_close(
        implied_weights(maps, tail.activations), expected, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "vgg11"])
def test_timm_models_are_split_through_timms_own_notrace_registry(name):
    # Their padding (computed from shapes) and pooling are registered with
    # timm as not traceable: kept whole, as timm's feature extraction keeps them.
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, pretrained=False, num_classes=10)).double().eval()
    layer = model.get_submodule({"tf_efficientnet_lite0": "bn2", "vgg11": "pre_logits"}[name])
    x = make_images(n=2, size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tail = layer_tail(model, layer, (x,), None, TARGETS, False)
    assert isinstance(tail, TracedTail)
    assert not [w for w in caught if issubclass(w.category, WholeModelReplayWarning)]
    replacement = torch.randn_like(tail.activations)
    rows = torch.arange(2)
    expected = output_with_layer(model, layer, x, replacement)[rows, TARGETS]
    torch.testing.assert_close(tail.scores(replacement.clone(), rows), expected)
