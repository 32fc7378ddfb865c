"""DataParallel and device_ids. On a machine without GPUs DataParallel runs its
module directly, so the results must equal the bare model's; the paths taken
(hooks on the wrapped module, the split of the model inside) are the ones a
multi-GPU run takes."""
import pytest
import torch
from torch.nn import DataParallel

from captum_xcam import LayerAblationCam
from conftest import make_images, make_tiny
from registered import GATHERING, METHODS, NOT_GATHERING, target_for
from test_fast_paths import counted

TARGETS = [1, 7]


@pytest.mark.parametrize("cam_class", METHODS)
def test_a_data_parallel_model_gives_the_bare_model_maps(cam_class):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    targets = target_for(cam_class, TARGETS)
    bare = cam_class(model, layer).attribute(x, target=targets)
    parallel = DataParallel(model)
    for forward_func in (parallel, parallel.forward):
        maps = cam_class(forward_func, layer, device_ids=parallel.device_ids).attribute(
            x, target=targets
        )
        torch.testing.assert_close(maps, bare, rtol=1e-9, atol=1e-12)


def test_ablation_cam_splits_the_model_inside_data_parallel():
    model, layer = make_tiny()
    stem = counted(model.stem)
    x = make_images(n=2, size=16)
    LayerAblationCam(DataParallel(model), layer).attribute(x, target=TARGETS)
    assert stem.calls == 1


@pytest.mark.parametrize("cam_class", NOT_GATHERING)
def test_device_ids_with_a_function_applying_data_parallel_are_refused(cam_class):
    model, layer = make_tiny()
    parallel = DataParallel(model)
    cam = cam_class(lambda x: parallel(x), layer, device_ids=[0, 1])
    with pytest.raises(ValueError, match="DataParallel model itself as forward_func"):
        cam.attribute(make_images(n=2, size=16), target=target_for(cam_class, TARGETS))


@pytest.mark.parametrize("cam_class", GATHERING)
def test_gradient_methods_gather_through_device_ids(cam_class):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    parallel = DataParallel(model)
    maps = cam_class(lambda x_: parallel(x_), layer, device_ids=[0]).attribute(x, target=TARGETS)
    torch.testing.assert_close(maps, cam_class(model, layer).attribute(x, target=TARGETS))
