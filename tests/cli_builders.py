"""Model builders for `captum-xcam explain --model cli_builders:<function>` in
tests/test_cli.py and tests/test_cli_transformers.py: a user's own functions, good and bad."""
from torch import nn


def small_net(num_classes=10):
    r"""A small CNN of one's own: no default CAM layer, so --layer names one."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


def timm_net(num_classes=1000):
    r"""A timm model built one's own way: its CAM layer is found by the timm rule."""
    import timm

    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes)


def no_options():
    return small_net()


def not_a_module():
    return {"model": small_net()}


def broken():
    raise RuntimeError("the weights server is down")


NUMBER = 3


class TokenNet(nn.Module):
    r"""A small transformer of one's own: 8x8 patches as tokens through an
    ``nn.TransformerEncoder``, averaged for the head. Its tokens' layout is not
    one the library recognises (not torchvision's or timm's ViT, DeiT, Swin)."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.patches = nn.Conv2d(3, width, 8, stride=8)
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # (N, h*w, width)
        return self.head(self.encoder(tokens).mean(1))


def token_net(num_classes=10):
    return TokenNet(num_classes)
