"""Channel selection for the perturbation CAMs (captum_xcam.TopChannels): only the
top channels of each example by a cheap criterion are replayed, computed here
independently (Captum's LayerGradientXActivation, a forward hook); they keep the
weights of the full computation and the others get 0."""
import math

import pytest
import torch
from captum.attr import LayerGradientXActivation

from captum_xcam import (
    LayerAblationCam,
    LayerIntegratedScoreCam,
    LayerScoreCam,
    LayerSmoothedScoreCam,
    TopChannels,
)
from tests.conftest import make_images, make_tiny

TARGETS = [1, 7]
METHODS = [
    (LayerAblationCam, {}),
    (LayerScoreCam, {}),
    (LayerSmoothedScoreCam, {"num_samples": 2, "stddev": 0.1}),
    (LayerIntegratedScoreCam, {"num_samples": 2}),
]


def layer_output(model, layer, x):
    seen = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def expected_selection(model, layer, x, selection):
    r"""(N, K) True for the channels kept: the top ``count`` by the criterion."""
    if selection.by == "gradient":
        gxa = LayerGradientXActivation(model, layer).attribute(x, target=TARGETS)
        criterion = gxa.flatten(2).sum(2).abs()
    else:
        criterion = layer_output(model, layer, x).flatten(2).pow(2).sum(2)
    keep = math.ceil(selection.fraction * criterion.shape[1])
    kept = torch.zeros_like(criterion, dtype=torch.bool)
    return kept.scatter(1, criterion.argsort(1, descending=True)[:, :keep], True)


@pytest.mark.parametrize("method, kwargs", METHODS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("by", ["gradient", "activation"])
def test_the_kept_channels_keep_their_weights_and_the_others_get_zero(method, kwargs, by):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    selection = TopChannels(0.4, by=by)
    cam = method(model, layer)
    full = cam.attribute(x, target=TARGETS, attr_dim_summation=False, **kwargs)
    part = cam.attribute(x, target=TARGETS, attr_dim_summation=False,
                         channel_selection=selection, **kwargs)
    kept = expected_selection(model, layer, x, selection)
    assert int(kept[0].sum()) == math.ceil(0.4 * full.shape[1]) < full.shape[1]
    kept = kept[:, :, None, None].expand_as(full)
    torch.testing.assert_close(part[kept], full[kept], rtol=1e-9, atol=1e-12)
    assert part[~kept].abs().max() == 0 < full[~kept].abs().max()


@pytest.mark.parametrize("method, kwargs", METHODS[:2], ids=lambda v: getattr(v, "__name__", ""))
def test_the_whole_fraction_is_the_full_computation(method, kwargs):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    cam = method(model, layer)
    torch.testing.assert_close(
        cam.attribute(x, target=TARGETS, channel_selection=TopChannels(1.0), **kwargs),
        cam.attribute(x, target=TARGETS, **kwargs), rtol=0, atol=0)


def test_only_the_kept_channels_are_replayed():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    channels = layer_output(model, layer, x).shape[1]
    rows = []
    handle = model.fc.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    LayerAblationCam(model, layer).attribute(x, target=TARGETS, perturbations_per_eval=1,
                                             channel_selection=TopChannels(0.25, "activation"))
    handle.remove()
    explained, *replays = rows  # the explained examples, then a chunk per ablated channel
    assert explained == len(x)
    assert sum(replays) == len(x) * math.ceil(0.25 * channels)


def test_score_cam_softmax_is_over_the_kept_channels():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    selection = TopChannels(0.5, by="activation")
    cam = LayerScoreCam(model, layer)
    activations = layer_output(model, layer, x)
    raw = cam.attribute(x, target=TARGETS, attr_dim_summation=False)
    raw_weights = raw.sum((2, 3)) / activations.sum((2, 3))
    kept = expected_selection(model, layer, x, selection)
    weights = raw_weights.masked_fill(~kept, -torch.inf).softmax(1)
    softmaxed = cam.attribute(x, target=TARGETS, attr_dim_summation=False,
                              channel_softmax=True, channel_selection=selection)
    torch.testing.assert_close(softmaxed, weights[:, :, None, None] * activations,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad, message", [
    ({"fraction": 0}, "fraction must be in"),
    ({"fraction": 1.5}, "fraction must be in"),
    ({"fraction": True}, "fraction must be in"),
    ({"fraction": 0.5, "by": "size"}, "ranks channels by one of"),
])
def test_bad_selections_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TopChannels(**bad)


def test_a_selection_of_another_type_is_refused():
    model, layer = make_tiny()
    with pytest.raises(TypeError, match="TopChannels"):
        LayerScoreCam(model, layer).attribute(make_images(n=1, size=16), target=1,
                                              channel_selection=0.5)


def test_at_least_one_channel_is_kept():
    assert TopChannels(1e-6).count(512) == 1 and TopChannels(0.25).count(512) == 128
