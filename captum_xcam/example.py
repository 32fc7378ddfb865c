"""A short, offline tour: every method on a randomly initialised torchvision
ResNet-18, with a one-line summary per method.

Run with ``python -m captum_xcam.example``."""
import time

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torchvision.models import resnet18

from captum_xcam import (
    GuidedLayerCam,
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
)

METHODS = {
    "Grad-CAM (Captum)": LayerGradCam,
    "XGrad-CAM": LayerXGradCam,
    "Grad-CAM++": LayerGradCamPlusPlus,
    "Ablation-CAM": LayerAblationCam,
    "Score-CAM": LayerScoreCam,
    "LIFT-CAM": LayerLiftCam,
}


def main() -> None:
    torch.manual_seed(0)
    model = resnet18().eval()  # random weights: nothing is downloaded
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    print(f"ResNet-18 (random weights), layer4, 2 images, targets {target.tolist()}")
    print(f"{'method':<20}{'map shape':<18}{'seconds':>8}{'positive share':>16}")
    for name, method in METHODS.items():
        start = time.perf_counter()
        attr = method(model, model.layer4).attribute(images, target=target, relu_attributions=True)
        seconds = time.perf_counter() - start
        upsampled = LayerAttribution.interpolate(attr, images.shape[2:], interpolate_mode="bilinear")
        share = (upsampled > 0).float().mean().item()
        print(f"{name:<20}{str(tuple(attr.shape)):<18}{seconds:>8.2f}{share:>16.2f}")
    guided = GuidedLayerCam(model, model.layer4, cam=LayerXGradCam).attribute(images, target=target)
    print(f"Guided XGrad-CAM: attribution of shape {tuple(guided.shape)} at input resolution")


if __name__ == "__main__":
    main()
