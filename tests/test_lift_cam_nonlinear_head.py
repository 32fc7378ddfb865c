"""LIFT-CAM on a layer followed by a nonlinear head (regression test for the
DeepLift double hooks, which broke it whenever forward_func was the model)."""
import torch
from torch import nn

from captum_xcam import LayerLiftCam


class ConvMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(5, 6)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu2(self.fc1(self.pool(a).flatten(1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.relu1(self.conv1(x))))


def test_lift_cam_weights_are_complete_through_a_relu_head():
    # DeepLift's summation-to-delta: sum_k w_k = f(A) - f(0), with the ReLU of
    # the head on the path. Per channel: the map without summation holds
    # w_k A_k, so sum_k <w_k A_k, A_k> / <A_k, A_k> = sum_k w_k.
    torch.manual_seed(0)
    model = ConvMlp().double().eval()
    x = torch.rand(3, 3, 10, 10, dtype=torch.float64)
    per_channel = LayerLiftCam(model, model.conv2).attribute(x, target=1, attr_dim_summation=False)
    with torch.no_grad():
        a = model.conv2(model.relu1(model.conv1(x)))
        expected = model.head(a)[:, 1] - model.head(torch.zeros_like(a))[:, 1]
    weights = (per_channel * a).flatten(2).sum(2) / a.pow(2).flatten(2).sum(2)
    torch.testing.assert_close(weights.sum(1), expected)
