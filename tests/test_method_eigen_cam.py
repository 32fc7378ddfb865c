"""EigenCAM against an independent principal component, from the
eigendecomposition (torch.linalg.eigh) of each example's Gram matrix."""
import pytest
import torch

from captum_xcam import LayerEigenCam
from conftest import make_images, make_model
from reference import activations_of


def expected_eigen_cam(A: torch.Tensor, center: bool) -> torch.Tensor:
    maps = []
    for n in range(A.shape[0]):
        M = A[n].reshape(A.shape[1], -1).T  # positions x channels
        if center:
            M = M - M.mean(0, keepdim=True)
        # M M^T u = s^2 u for the top left singular vector u; v = M^T u / s.
        values, vectors = torch.linalg.eigh(M @ M.T)
        projection = M @ (M.T @ vectors[:, -1]) / values[-1].sqrt()
        mean_map = A[n].reshape(A.shape[1], -1).mean(0)
        mean_map = mean_map - mean_map.mean()
        correlation = float((projection * mean_map).sum())
        typical_channel = float(M.norm()) / M.shape[1] ** 0.5
        if float(mean_map.norm()) > 1e-6 * typical_channel and abs(correlation) > 1e-6 * float(
            projection.norm() * mean_map.norm()
        ):
            flip = correlation < 0
        else:  # no correlation (a LayerNorm's output): the largest loading positive
            loadings = M.T @ projection
            flip = float(loadings[loadings.abs().argmax()]) < 0
        if flip:
            projection = -projection
        maps.append(projection.reshape(1, *A.shape[2:]))
    return torch.stack(maps)


@pytest.mark.parametrize("center", [True, False])
def test_eigen_cam_is_the_projection_on_the_first_principal_component(architecture, center):
    model, layer = make_model(architecture)
    x = make_images()
    A = activations_of(model, layer, x)
    actual = LayerEigenCam(model, layer).attribute(x, center=center)
    torch.testing.assert_close(actual, expected_eigen_cam(A, center), rtol=1e-7, atol=1e-9)


def test_eigen_cam_is_target_free_and_says_so():
    model, layer = make_model("resnet18")
    x = make_images(n=2)
    plain = LayerEigenCam(model, layer).attribute(x)
    with pytest.warns(UserWarning, match="target-free"):
        with_target = LayerEigenCam(model, layer).attribute(x, target=[3, 4])
    torch.testing.assert_close(with_target, plain, rtol=0, atol=0)


def test_eigen_cam_sign_follows_the_mean_activation():
    # Flipping every channel's sign would flip the SVD's vector; the map's sign
    # is fixed by the data, so a batch and its rows agree whatever LAPACK picks.
    model, layer = make_model("vgg11_bn")
    x = make_images(n=3)
    batch = LayerEigenCam(model, layer).attribute(x)
    rows = torch.cat([LayerEigenCam(model, layer).attribute(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, rows, rtol=1e-7, atol=1e-9)
    A = activations_of(model, layer, x)
    mean_map = A.mean(1)
    centred = mean_map - mean_map.flatten(1).mean(1)[:, None, None]
    assert ((batch[:, 0] * centred).flatten(1).sum(1) >= 0).all()
