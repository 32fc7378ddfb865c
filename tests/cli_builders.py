"""Model builders for `captum-xcam explain --model cli_builders:<function>` in
tests/test_cli.py: a user's own functions, good and bad."""
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
