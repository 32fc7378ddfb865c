"""Vision transformers: every method on the patch grid of timm's ViT, DeiT
(two prefix tokens) and Swin and torchvision's ViT-B/16 and Swin-T, random
weights, against computations written here with our own hooks and our own
reshape of the tokens; and the errors for a token layer without a transform.

The models run at small image sizes (same architectures, fewer patches) so
that the perturbation methods stay cheap; the Score-CAM family, a whole
forward pass per channel, runs on the two 192-channel ViTs by default and on
all five with ``CAPTUM_XCAM_HEAVY=1``."""
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Tuple

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn

from captum_xcam import (
    ChannelsLast,
    GuidedLayerCam,
    LayerAblationCam,
    LayerEigenCam,
    LayerGradCam,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
    LiftCompletenessWarning,
    TokenGrid,
    reshape_transform_for,
)
from reference import (
    activations_and_gradients,
    activations_of,
    gradcampp_weights,
    implied_weights,
    sampled_channels,
    score_cam_weight,
    scores_of,
    summed_over_channels,
    xgrad_weights,
)
from registered import METHODS, quick, target_for
from test_method_eigen_cam import expected_eigen_cam

NUM_CLASSES = 5


@dataclass(frozen=True)
class Transformer:
    build: Callable[[], nn.Module]
    layer: str
    prefix_tokens: int  # -1: channels-last (N, h, w, C)
    size: int
    grid: Tuple[int, int]


def _timm(name: str, size: int) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, img_size=size)


def _vit_b_16() -> nn.Module:
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=NUM_CLASSES)
    nn.init.normal_(model.heads.head.weight, std=0.05)  # torchvision initialises it to zeros
    return model


TRANSFORMERS = {
    "timm/vit_tiny_patch16_224": Transformer(
        _timm("vit_tiny_patch16_224", 48), "blocks.11.norm1", 1, 48, (3, 3)),
    "timm/deit_tiny_distilled_patch16_224": Transformer(
        _timm("deit_tiny_distilled_patch16_224", 48), "blocks.11.norm1", 2, 48, (3, 3)),
    "timm/swin_tiny_patch4_window7_224": Transformer(
        _timm("swin_tiny_patch4_window7_224", 64), "layers.3", -1, 64, (2, 2)),
    "torchvision/vit_b_16": Transformer(
        _vit_b_16, "encoder.layers.encoder_layer_11.ln_1", 1, 32, (2, 2)),
    "torchvision/swin_t": Transformer(
        lambda: torchvision.models.swin_t(weights=None, num_classes=NUM_CLASSES), "features.7", -1,
        64, (2, 2)),
}
#: Where a whole forward pass per channel (the Score-CAM family) is cheap enough
#: for the default test run (192 channels); CAPTUM_XCAM_HEAVY=1 runs it on all
#: five (768 channels each; the log is benchmarks/results/transformers_heavy.txt).
HEAVY = os.environ.get("CAPTUM_XCAM_HEAVY") == "1"
CHEAP_REPLAYS = list(TRANSFORMERS) if HEAVY else [
    "timm/vit_tiny_patch16_224", "timm/deit_tiny_distilled_patch16_224"]
TARGETS = [1, 3]


@lru_cache(maxsize=None)
def model_and_layer(name: str) -> Tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = TRANSFORMERS[name].build().double().eval()
    return model, model.get_submodule(TRANSFORMERS[name].layer)


def images(name: str, n: int = 2) -> Tensor:
    size = TRANSFORMERS[name].size
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)


def own_grid(name: str, tensor: Tensor) -> Tensor:
    r"""Our own reshape: drop the prefix tokens, lay the patch tokens on the grid."""
    spec = TRANSFORMERS[name]
    if spec.prefix_tokens < 0:
        return tensor.permute(0, 3, 1, 2)
    h, w = spec.grid
    return tensor[:, spec.prefix_tokens:].reshape(len(tensor), h, w, -1).permute(0, 3, 1, 2)


def zero_grid_channel(name: str, tensor: Tensor, k: int) -> Tensor:
    r"""The layer tensor with channel k of the patch grid zeroed, prefix tokens kept."""
    out = tensor.clone()
    spec = TRANSFORMERS[name]
    if spec.prefix_tokens < 0:
        out[..., k] = 0
    else:
        out[:, spec.prefix_tokens:, k] = 0
    return out


def grid_and_gradients(name: str, x: Tensor) -> Tuple[nn.Module, nn.Module, Tensor, Tensor]:
    model, layer = model_and_layer(name)
    A, G = activations_and_gradients(model, layer, x, TARGETS[: len(x)])
    return model, layer, own_grid(name, A), own_grid(name, G)


GRADIENT_FORMULAS = {
    "gradcam": lambda A, G: (G.mean((2, 3), keepdim=True) * A).sum(1, keepdim=True),
    "xgradcam": lambda A, G: (xgrad_weights(A, G)[:, :, None, None] * A).sum(1, keepdim=True),
    "gradcampp": lambda A, G: (gradcampp_weights(A, G)[:, :, None, None] * A).sum(1, keepdim=True),
    "hirescam": lambda A, G: summed_over_channels(A, G, lambda g, a: g * a),
    "layercam": lambda A, G: summed_over_channels(A, G, lambda g, a: g.clamp(min=0) * a),
    "elementwisegradcam": lambda A, G: summed_over_channels(
        A, G, lambda g, a: (g * a).clamp(min=0)),
}


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_the_transform_is_recognised(name):
    model, layer = model_and_layer(name)
    transform = reshape_transform_for(model, layer)
    A = activations_of(model, layer, images(name, 1))
    assert torch.equal(transform(A), own_grid(name, A))
    assert own_grid(name, A).shape[2:] == TRANSFORMERS[name].grid


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_gradient_methods_on_the_patch_grid(name):
    x = images(name)
    model, layer, A, G = grid_and_gradients(name, x)
    for key, formula in GRADIENT_FORMULAS.items():
        cam = next(c for c in METHODS if c.method_info.key == key)
        actual = cam(model, layer).attribute(x, target=TARGETS)
        assert actual.shape == (2, 1) + TRANSFORMERS[name].grid
        assert actual.abs().sum() > 0
        torch.testing.assert_close(actual, formula(A, G), rtol=1e-8, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_ablation_cam_zeroes_a_grid_channel_in_the_layer_layout(name):
    x, t = images(name, 1), TARGETS[0]
    model, layer = model_and_layer(name)
    A = own_grid(name, activations_of(model, layer, x))
    with torch.no_grad():
        y = float(model(x)[0, t])
    maps = LayerAblationCam(model, layer).attribute(
        x, target=t, attr_dim_summation=False, perturbations_per_eval=256)
    weights = implied_weights(maps, A)
    for k in sampled_channels(A, 0, seed=0):
        handle = layer.register_forward_hook(lambda m, i, o: zero_grid_channel(name, o, k))
        try:
            with torch.no_grad():
                y_k = float(model(x)[0, t])
        finally:
            handle.remove()
        assert weights[0, k].item() == pytest.approx((y - y_k) / y, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_eigen_cam_on_the_patch_grid(name):
    x = images(name)
    model, layer = model_and_layer(name)
    A = own_grid(name, activations_of(model, layer, x))
    actual = LayerEigenCam(model, layer).attribute(x)
    torch.testing.assert_close(actual, expected_eigen_cam(A, center=True), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", CHEAP_REPLAYS)
def test_score_cam_masks_the_input_with_the_grid(name):
    x, t = images(name, 1), TARGETS[1]
    model, layer = model_and_layer(name)
    A = own_grid(name, activations_of(model, layer, x))
    maps = LayerScoreCam(model, layer).attribute(
        x, target=t, attr_dim_summation=False, perturbations_per_eval=256)
    weights = implied_weights(maps, A)
    for k in sampled_channels(A, 0, seed=0, count=4):
        expected = score_cam_weight(model, A, x, torch.zeros_like(x), 0, k, t)
        assert weights[0, k].item() == pytest.approx(expected, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("name", ["timm/swin_tiny_patch4_window7_224", "torchvision/swin_t"])
def test_lift_cam_is_complete_through_a_swin_head(name):
    # After Swin's last stage: LayerNorm, average pooling, linear: all with exact rules.
    x = images(name)
    model, layer = model_and_layer(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LiftCompletenessWarning)
        maps = LayerLiftCam(model, layer).attribute(x, target=TARGETS, attr_dim_summation=False)
    handle = layer.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            zeroed = scores_of(model(x), TARGETS)
    finally:
        handle.remove()
    with torch.no_grad():
        y = scores_of(model(x), TARGETS)
    A = own_grid(name, activations_of(model, layer, x))
    weights = implied_weights(maps, A)
    torch.testing.assert_close(weights.sum(1), y - zeroed, rtol=1e-7, atol=1e-10)


def test_lift_cam_through_attention_says_what_it_approximates():
    name = "timm/vit_tiny_patch16_224"
    model, layer = model_and_layer(name)
    with pytest.warns(LiftCompletenessWarning, match="only to within"):
        LayerLiftCam(model, layer).attribute(images(name), target=TARGETS)


@pytest.mark.parametrize(
    "name, cam_class",
    [(name, cam) for name in CHEAP_REPLAYS for cam in METHODS]
    # LIFT-CAM through attention, on the others (their other methods are above)
    + [(name, LayerLiftCam) for name in TRANSFORMERS if name not in CHEAP_REPLAYS],
    ids=lambda v: v if isinstance(v, str) else v.method_info.key,
)
def test_every_method_gives_a_map_on_the_patch_grid(name, cam_class):
    x = images(name, 1)
    model, layer = model_and_layer(name)
    kwargs = dict(quick(cam_class))
    if cam_class.method_info.perturbation:
        kwargs["perturbations_per_eval"] = 256
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LiftCompletenessWarning)
        attr = cam_class(model, layer).attribute(x, target=target_for(cam_class, 2), **kwargs)
    assert attr.shape == (1, 1) + TRANSFORMERS[name].grid
    assert torch.isfinite(attr).all() and attr.abs().sum() > 0


def test_a_given_transform_equals_the_recognised_one():
    name = "timm/deit_tiny_distilled_patch16_224"
    model, layer = model_and_layer(name)
    x = images(name)
    given = LayerXGradCam(model, layer, reshape_transform=TokenGrid(prefix_tokens=2))
    torch.testing.assert_close(
        given.attribute(x, target=TARGETS), LayerXGradCam(model, layer).attribute(x, target=TARGETS)
    )


def test_a_token_layer_without_a_transform_is_refused_with_what_to_pass():
    name = "timm/vit_tiny_patch16_224"
    model, layer = model_and_layer(name)
    forward = lambda x: model(x).softmax(1)  # noqa: E731 (a function: the model is not seen)
    for cam in (LayerGradCam, LayerScoreCam, LayerAblationCam):
        with pytest.raises(ValueError, match=r"token sequence.*TokenGrid\(prefix_tokens=P\)"):
            cam(forward, layer).attribute(images(name, 1), target=1)
    attr = LayerGradCam(forward, layer, reshape_transform=TokenGrid(1)).attribute(
        images(name, 1), target=1)
    assert attr.shape == (1, 1, 3, 3)


def test_a_channels_last_layer_without_a_transform_is_refused():
    name = "timm/swin_tiny_patch4_window7_224"
    model, _ = model_and_layer(name)
    norm = model.norm  # LayerNorm over the last dimension of (N, h, w, C)
    with pytest.raises(ValueError, match=r"channels-last.*ChannelsLast\(\)"):
        LayerGradCam(lambda x: model(x), norm).attribute(images(name, 1), target=1)
    attr = LayerGradCam(lambda x: model(x), norm, reshape_transform=ChannelsLast()).attribute(
        images(name, 1), target=1)
    assert attr.shape == (1, 1, 2, 2)


class TokenTransformer(nn.Module):
    r"""A small transformer of a user's own: not one the library recognises."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.encoder(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(tokens.mean(1))


def test_a_users_transformer_gets_the_error_and_works_with_a_token_grid():
    torch.manual_seed(0)
    model = TokenTransformer().double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="token sequence"):
        LayerGradCam(model, model.encoder.layers[1]).attribute(x, target=TARGETS)
    A, G = activations_and_gradients(model, model.encoder.layers[1], x, TARGETS)
    grid = lambda t: t.reshape(len(t), 4, 4, -1).permute(0, 3, 1, 2)  # noqa: E731
    expected = GRADIENT_FORMULAS["gradcam"](grid(A), grid(G))
    actual = LayerGradCam(model, model.encoder.layers[1], reshape_transform=TokenGrid(0)).attribute(
        x, target=TARGETS)
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-12)


def test_a_one_dimensional_convolution_keeps_working():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(6, 3),
    ).double()
    x = torch.randn(2, 2, 10, dtype=torch.float64)
    A, G = activations_and_gradients(model, model[0], x, [0, 2])
    actual = LayerGradCam(model, model[0]).attribute(x, target=[0, 2])
    torch.testing.assert_close(actual, (G.mean(2, keepdim=True) * A).sum(1, keepdim=True))


def test_a_transform_that_computes_values_cannot_be_replayed_and_warns_when_read():
    name = "timm/vit_tiny_patch16_224"
    model, layer = model_and_layer(name)
    x = images(name, 1)
    scaled = lambda t: TokenGrid(1)(t) * 2  # noqa: E731 (new values, not a rearrangement)
    with pytest.warns(UserWarning, match="not the gradient of the target with respect to the grid"):
        attr = LayerGradCam(model, layer, reshape_transform=scaled).attribute(x, target=1)
    assert attr.shape == (1, 1, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rearrangement is exact: no warning
        LayerGradCam(model, layer, reshape_transform=TokenGrid(1)).attribute(x, target=1)
    with pytest.raises(ValueError, match="computes new values"):
        LayerAblationCam(model, layer, reshape_transform=scaled).attribute(x, target=1)


def test_the_last_blocks_output_gets_no_gradient_and_says_so():
    name = "timm/vit_tiny_patch16_224"
    model, _ = model_and_layer(name)
    x = images(name, 1)
    with pytest.warns(UserWarning, match="every weight is zero.*blocks\\[-1\\].norm1"):
        attr = LayerGradCam(model, model.blocks[11]).attribute(x, target=1)
    assert not attr.any()
    # Score-CAM masks the input instead, so it still sees the patches.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attr = LayerScoreCam(model, model.blocks[11]).attribute(
            x, target=1, perturbations_per_eval=256)
    assert attr.any()


def test_a_transformer_inside_a_wrapper_is_recognised_and_guided_variants_work():
    name = "timm/vit_tiny_patch16_224"
    model, layer = model_and_layer(name)
    wrapper = nn.Sequential(model, nn.Softmax(dim=1))
    x = images(name, 1)
    torch.testing.assert_close(
        LayerGradCam(wrapper, layer).attribute(x, target=1),
        LayerGradCam(lambda t: model(t).softmax(1), layer, reshape_transform=TokenGrid(1))
        .attribute(x, target=1),
    )
    guided = GuidedLayerCam(model, layer, cam=LayerGradCam).attribute(x, target=1)
    assert guided.shape == x.shape
