"""captum_xcam.metrics.quantus_adapter: registered CAMs as Quantus explanation
functions, checked against direct computations and through Quantus's metrics
on the shipped SmallCNN."""
import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from captum.attr import LayerGradCam as CaptumLayerGradCam
from torch import nn

from captum_xcam import GuidedLayerCam, LayerXGradCam
from captum_xcam.data import make_synthetic
from captum_xcam.metrics.quantus_adapter import (
    CamExplainFunc,
    explain_func_for,
    quantus_explain_func,
)
from captum_xcam.models import load_pretrained

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


@pytest.fixture(scope="module")
def batch():
    data = make_synthetic(8, seed=1)
    return data.images.numpy(), data.labels.numpy()


def _direct(model, images, labels, method=LayerXGradCam, relu=True, mode="bilinear"):
    maps = method(model, model.block4).attribute(
        images, target=labels, relu_attributions=relu
    )
    return LayerAttribution.interpolate(maps, images.shape[2:], interpolate_mode=mode).detach()


def _quiet(metric_class, **kwargs):
    return metric_class(disable_warnings=True, display_progressbar=False, **kwargs)


# (a) The adapter against direct computations.


def test_equals_the_direct_call_for_numpy_inputs_and_each_form_of_targets(model, batch):
    x, y = batch
    expected = _direct(model, torch.from_numpy(x), torch.from_numpy(y)).numpy()
    for targets in (y, y.tolist(), torch.from_numpy(y), y.astype(np.int32)):
        maps = quantus_explain_func(model, x, targets, method="xgradcam", layer="block4")
        assert maps.shape == (8, 1, 64, 64) and maps.dtype == np.float32
        np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    one = quantus_explain_func(model, x[:3], np.int64(2), layer=model.block4)
    two = _direct(model, torch.from_numpy(x[:3]), 2).numpy()
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def test_options_classes_layouts_and_wrappers(model, batch):
    x, y = batch
    xt, yt = torch.from_numpy(x[:4]), torch.from_numpy(y[:4])
    # Captum's own class, no ReLU, nearest upsampling.
    expected = _direct(model, xt, yt, CaptumLayerGradCam, relu=False, mode="nearest").numpy()
    maps = quantus_explain_func(model, xt, yt, method=CaptumLayerGradCam, layer="block4",
                                relu_attributions=False, interpolate_mode="nearest")
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    # The layer's resolution.
    small = quantus_explain_func(model, xt, yt, layer="block4", upsample=False)
    raw = LayerXGradCam(model, model.block4).attribute(xt, target=yt, relu_attributions=True)
    np.testing.assert_allclose(small, raw.numpy(), rtol=1e-5, atol=1e-6)
    # Channel last in, channel last out.
    last = quantus_explain_func(model, x[:4].transpose(0, 2, 3, 1), y[:4], layer="block4",
                                channel_first=False)
    np.testing.assert_allclose(last[..., 0], _direct(model, xt, yt).numpy()[:, 0],
                               rtol=1e-5, atol=1e-6)
    # The guided variant, summed over the colour channels.
    guided = GuidedLayerCam(model, model.block4, cam=LayerXGradCam).attribute(
        xt.clone().requires_grad_(), target=yt, interpolate_mode="bilinear").detach()
    np.testing.assert_allclose(
        quantus_explain_func(model, x[:4], y[:4], layer="block4", guided=True),
        guided.sum(1, keepdim=True).numpy(), rtol=1e-5, atol=1e-6)
    # Wrapped models: DataParallel (dotted names of the inner module) and
    # Quantus's PyTorchModel; float64 inputs cast to the model's dtype.
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(model, channel_first=True)
    for m in (nn.DataParallel(model), wrapped):
        np.testing.assert_allclose(
            quantus_explain_func(m, x[:4].astype(np.float64), y[:4], layer="block4"),
            _direct(model, xt, yt).numpy(), rtol=1e-5, atol=1e-6)
    # The factory: bound options, Quantus's device and quantus.evaluate's
    # method name accepted.
    explain = explain_func_for("gradcampp", "block4", relu_attributions=False)
    assert isinstance(explain, CamExplainFunc) and "gradcampp" in repr(explain)
    np.testing.assert_allclose(
        explain(model=model, inputs=x[:4], targets=y[:4], device="cpu", method="GradCAM++"),
        quantus_explain_func(model, x[:4], y[:4], method="gradcampp", layer="block4",
                             relu_attributions=False))


# (b) Through Quantus.


def test_quantus_own_layer_grad_cam_equals_the_adapter(model, batch):
    x, y = batch
    theirs = quantus.explain(model, x, y, method="LayerGradCam", gc_layer="model.block4",
                             interpolate=(64, 64), interpolate_mode="bilinear")
    ours = quantus_explain_func(model, x, y, method="gradcam", layer="block4",
                                relu_attributions=False)
    assert theirs.shape == ours.shape == (8, 1, 64, 64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_faithfulness_metrics_prefer_the_map_to_its_reverse(model, batch):
    x, y = batch
    explain = explain_func_for("xgradcam", "block4")

    def reversed_map(model, inputs, targets, **kwargs):
        return -explain(model, inputs, targets, **kwargs)

    np.random.seed(0)
    correlation = _quiet(quantus.FaithfulnessCorrelation, nr_runs=5, subset_size=256,
                         return_aggregate=False)(
        model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain, device="cpu")
    assert len(correlation) == 8 and np.all(np.isfinite(correlation))
    assert np.all(np.abs(correlation) <= 1)
    # Pixel flipping, most relevant first: the score falls faster along our
    # map than along its reverse. Quantus's own AUC calls np.trapz, which
    # NumPy 2.4 removed, so the curves come back and are integrated here.
    curves = {}
    for name, func in (("map", explain), ("reversed", reversed_map)):
        flipping = _quiet(quantus.PixelFlipping, features_in_step=512,
                          perturb_baseline="black", return_auc_per_sample=False)
        curves[name] = np.asarray(flipping(model=model, x_batch=x, y_batch=y, a_batch=None,
                                           explain_func=func))
    assert curves["map"].shape == (8, 24) and np.all(np.isfinite(curves["map"]))
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy < 2 has only trapz
    auc = {name: trapezoid(c, axis=1).mean() for name, c in curves.items()}
    assert auc["map"] < 0.5 * auc["reversed"], auc


def test_random_logit_tells_class_discriminative_maps_from_target_free_ones(model, batch):
    x, y = batch
    scores = {}
    for method in ("xgradcam", "eigencam"):
        metric = _quiet(quantus.RandomLogit, num_classes=4, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no "target ignored" per call
            scores[method] = np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=None,
                                               explain_func=explain_func_for(method, "block4")))
    assert scores["xgradcam"].shape == (8,) and np.all(np.isfinite(scores["xgradcam"]))
    # SSIM between the maps of the label and of a random other class: 1 for
    # EigenCAM, whose map ignores the class; below it when targets arrive.
    np.testing.assert_allclose(scores["eigencam"], 1.0, atol=1e-6)
    assert np.all(scores["xgradcam"] < 0.9)


# A ReLU'd map of a randomised model can be all zeros, whose rank correlation
# NumPy computes as NaN with a warning.
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_randomisation_metrics_explain_copies_of_the_model_by_layer_name(model, batch):
    x, y = batch
    result = _quiet(quantus.MPRT, return_aggregate=False)(
        model=model, x_batch=x[:4], y_batch=y[:4], a_batch=None,
        explain_func=explain_func_for("xgradcam", "block4"))
    assert list(result)[0] == "original" and "block4.0" in result
    assert all(len(scores) == 4 for scores in result.values())
    # A module object of the original model is not in the copies.
    with pytest.raises(ValueError, match="dotted name"):
        _quiet(quantus.MPRT)(model=model, x_batch=x[:4], y_batch=y[:4], a_batch=None,
                             explain_func=explain_func_for("xgradcam", model.block4))


def test_quantus_evaluate_passes_its_keys_as_method(model, batch):
    x, y = batch[0][:4], batch[1][:4]
    keys = ("layercam", "eigencam")
    results = quantus.evaluate(
        metrics={"sparseness": _quiet(quantus.Sparseness)},
        xai_methods={key: quantus_explain_func for key in keys},
        model=model, x_batch=x, y_batch=y, explain_func_kwargs={"layer": "block4"},
        agg_func=np.asarray,
    )
    assert set(results) == set(keys)
    for key in keys:
        direct = np.asarray(_quiet(quantus.Sparseness)(
            model=model, x_batch=x, y_batch=y, a_batch=None,
            explain_func=explain_func_for(key, "block4")))
        np.testing.assert_allclose(results[key]["sparseness"], direct)
        assert len(direct) == 4 and np.all((0 < direct) & (direct < 1))
    assert not np.allclose(results["layercam"]["sparseness"], results["eigencam"]["sparseness"])


# (c) Model state and errors.


def _state(model):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
    }


@pytest.mark.parametrize("method", ["xgradcam", CaptumLayerGradCam, "scorecam"])
def test_the_model_is_left_as_found(batch, method):
    x, y = batch
    model = load_pretrained().train()  # BatchNorm statistics would move
    model.block1[0].weight.requires_grad_(False)
    before = _state(model)
    quantus_explain_func(model, x[:2], y[:2], method=method, layer="block4")
    quantus_explain_func(model, x[:2], y[:2], method=method, layer="block4", guided=True)
    with pytest.raises(TypeError, match="positional arguments"):  # an error midway
        quantus_explain_func(model, x[:2], y[:2], method=method, layer="block4",
                             additional_forward_args=(1, 2, 3))
    after = _state(model)
    for key in ("training", "requires_grad", "grads", "hooks"):
        assert after[key] == before[key], key
    for name, tensor in before["tensors"].items():
        assert torch.equal(after["tensors"][name], tensor), name


def test_errors_name_the_problem(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"Did you mean 'xgradcam'.*Registered: .*eigencam"):
        explain_func_for("xgradcm", "block4")
    with pytest.raises(TypeError, match="registry key"):
        quantus_explain_func(model, x, y, method=42, layer="block4")
    with pytest.raises(ValueError, match=r"no layer 'blok4'. Did you mean 'block4'.*top-level"):
        quantus_explain_func(model, x, y, layer="blok4")
    with pytest.raises(ValueError, match="not a submodule"):
        quantus_explain_func(model, x, y, layer=nn.Conv2d(64, 64, 3))
    with pytest.raises(ValueError, match="does not move it"):
        quantus_explain_func(model, x, y, layer="block4", device="meta")
    with pytest.raises(TypeError, match="integer class indices"):
        quantus_explain_func(model, x, y.astype(np.float32), layer="block4")
    with pytest.raises(ValueError, match="guided=True"):
        quantus_explain_func(model, x, y, layer="block4", guided=True, upsample=False)
    with pytest.raises(ValueError, match=r"batch of images"):
        quantus_explain_func(model, x[0, 0], y, layer="block4")
