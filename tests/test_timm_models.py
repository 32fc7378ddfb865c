"""timm models by name: the CAM layer derived per model (the module whose output
forward_features returns), preprocessing, class names, checkpoints. Nothing is
downloaded: random weights, small inputs. Hand-written models test the rule's
traps without timm."""
import math

import pytest
import torch
from torch import nn

from captum_xcam.models import (
    check_timm_name,
    imagenet_class_names,
    load_timm_model,
    timm_cam_layer,
    timm_preprocessing,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    r"""Small models on shared cores: one thread is faster than several that
    wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The module the rule picks, one model per kind of ending of forward_features.
TIMM_LAYERS = {
    "resnet18": "layer4",                  # the last stage (not its last block)
    "seresnext26d_32x4d": "layer4",
    "efficientnet_b0": "bn2",              # a 1x1 conv head after the last stage
    "mobilenetv3_small_050": "blocks",     # the head's conv comes after pooling
    "mixnet_s": "bn2",
    "ghostnet_050": "blocks",
    "convnext_atto": "stages",             # norm_pre is an Identity: skipped
    "regnety_002": "s4",
    "repvgg_a0": "stages",
    "nf_regnet_b0": "final_act",           # after a final conv
    "resnetv2_18": "norm",                 # pre-activation: a norm after the stages
    "dla34": "level5",
    "cs3darknet_s": "stages",
    "rexnet_100": "features",
    "fastvit_t8": "final_conv",
    "legacy_xception": "act4",
    "inception_v3": "Mixed_7c",
    "test_byobnet": "stages",
    "test_nfnet": "final_act",
}


def inputs_for(model, side=64):
    cfg = model.pretrained_cfg
    if cfg.get("fixed_input_size"):
        side = cfg["input_size"][-1]
    if cfg.get("min_input_size"):
        side = max(side, cfg["min_input_size"][-1])
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(TIMM_LAYERS))
def test_default_layer_outputs_what_forward_features_returns(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = inputs_for(model, side=80 if name == "inception_v3" else 64)
    layer = timm_cam_layer(model, x)
    assert layer == TIMM_LAYERS[name]
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, args, output: seen.append(output.clone()))
    try:
        with torch.no_grad():
            features = model.forward_features(x)
            del seen[:]
            output = model(x)  # what the CLI hooks: one call, the map the head pools
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].dim() == 4 and output.shape == (2, 1000)
    assert torch.equal(seen[0], features)
    assert torch.allclose(model.forward_head(seen[0]), output)
    assert timm_cam_layer(model, x[:1]) == layer  # the structure decides, not the input


def test_default_layer_without_inputs_uses_the_models_input_size():
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_efficientnet", pretrained=False).eval()
    assert timm_cam_layer(model) == "bn2"


@pytest.mark.parametrize("name, message", [
    ("test_mambaout", "channels-last"),  # (N, h, w, C), not a recognised transformer
])
def test_models_without_a_feature_map_have_no_default_layer(name, message):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False).eval()
    with pytest.raises(ValueError, match="No default CAM layer") as error:
        timm_cam_layer(model, inputs_for(model)[:1])
    assert message in str(error.value) and "name" in str(error.value)


class Endings(nn.Module):
    r"""A timm-style model whose forward_features ends in one of the ways the
    rule must see through: a conv then an in-place ReLU module, an activation
    module shared with earlier layers, or a function after the last module."""

    def __init__(self, ending):
        super().__init__()
        self.ending = ending
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.ReLU()
        self.tail = nn.Identity()

    def forward_features(self, x):
        x = self.shared(self.conv1(x))
        x = self.conv2(x)
        if self.ending == "inplace":
            return self.tail(self.act(x))  # conv2's output is changed in place
        if self.ending == "shared":
            return self.shared(x)
        return torch.relu(x)

    def forward(self, x):
        return self.forward_features(x).mean((2, 3))


def test_rule_skips_modified_outputs_shared_modules_and_identities():
    x = torch.randn(1, 3, 12, 12)
    assert timm_cam_layer(Endings("inplace").eval(), x) == "act"
    for ending in ("shared", "function"):
        with pytest.raises(ValueError, match="no module outputs the feature map"):
            timm_cam_layer(Endings(ending).eval(), x)
    with pytest.raises(ValueError, match="no forward_features"):
        timm_cam_layer(nn.Conv2d(3, 4, 3), x)
    model = nn.Sequential(nn.BatchNorm2d(3))  # left as found: mode, statistics, hooks
    model.forward_features = model.forward
    model[0].eval()
    assert timm_cam_layer(model, x) == "0"
    assert model.training and not model[0].training
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(model[0].running_mean, torch.zeros(3))
    model.train()
    timm_cam_layer(model, x)
    assert model[0].training and int(model[0].num_batches_tracked) == 0


def test_names_and_tags():
    pytest.importorskip("timm")
    check_timm_name("resnet50")
    check_timm_name("resnet50.a1_in1k")
    with pytest.raises(ValueError, match="did you mean timm/resnet50"):
        check_timm_name("resnet500")
    with pytest.raises(ValueError, match="tags of resnet18 are timm/resnet18.a1_in1k"):
        check_timm_name("resnet18.in9k")


def test_preprocessing_matches_timms_eval_transform():
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config
    from torchvision.transforms import InterpolationMode

    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    for name in ("resnet18", "inception_v3", "efficientnet_b2"):
        preprocessing = timm_preprocessing(name)
        config = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(
            name).to_dict())
        transform = create_transform(**config, is_training=False)
        resize, crop, _, normalize = transform.transforms
        resize.antialias = True  # torchvision < 0.17 does not antialias tensors by default
        assert torch.equal(preprocessing.crop(image), crop(resize(image))), name
        assert preprocessing.crop_size == config["input_size"][-1]
        assert preprocessing.mean == config["mean"] and preprocessing.std == config["std"]
        assert torch.allclose(normalize.mean, torch.tensor(preprocessing.mean))
    resnet = timm_preprocessing("resnet18")
    assert (resnet.resize_size, resnet.crop_size) == (math.floor(224 / 0.95), 224)
    assert resnet.interpolation == InterpolationMode.BICUBIC
    inception = timm_preprocessing("inception_v3")
    assert inception.crop_size == 299 and inception.mean == (0.5, 0.5, 0.5)
    small = timm_preprocessing("resnet18", crop_size=64)
    assert (small.resize_size, small.crop_size) == (round(64 * 235 / 224), 64)
    model = timm.create_model("test_resnet", pretrained=False)
    assert timm_preprocessing(model) == timm_preprocessing("test_resnet")


def test_imagenet_class_names():
    pytest.importorskip("timm")
    names = imagenet_class_names(1000)
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"]
    assert imagenet_class_names(10) is None


def test_checkpoint_round_trip_and_class_count(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    state = timm.create_model("test_resnet", num_classes=10).state_dict()
    torch.save({"state_dict": state}, tmp_path / "ten.pt")
    model = load_timm_model("test_resnet", checkpoint=tmp_path / "ten.pt", num_classes=10)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(ValueError, match="another number of classes"):
        load_timm_model("test_resnet", checkpoint=tmp_path / "ten.pt")
