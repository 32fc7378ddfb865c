"""ROAD (Rong et al., ICML 2022): the noisy linear imputation against hand
cases, identities and a dense solve, and the MoRF / LeRF curves on models
whose scores are known in closed form."""
import pytest
import torch
from torch import nn

from captum_xcam.metrics import RoadCurves, noisy_linear_imputation, road
from tests.metrics_models import PixelLinear, TwoClassPixelLinear

DIRECT, DIAGONAL = 1 / 6, 1 / 12


def paper_system(image, removed):
    r"""The paper's equations written out one removed pixel at a time:
    ``x_i - sum_j w_ij x_j / sum_j w_ij = 0`` over the neighbours inside the
    image, kept neighbours moved to the right-hand side."""
    height, width = removed.shape
    unknown = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {p: k for k, p in enumerate(unknown)}
    a = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
    b = torch.zeros(len(unknown), dtype=torch.float64)
    for k, (y, x) in enumerate(unknown):
        neighbours = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy or dx) and 0 <= y + dy < height and 0 <= x + dx < width:
                    neighbours.append(((y + dy, x + dx), DIAGONAL if dy and dx else DIRECT))
        total = sum(w for _, w in neighbours)
        a[k, k] = 1.0
        for q, w in neighbours:
            if q in index:
                a[k, index[q]] -= w / total
            else:
                b[k] += w / total * float(image[q])
    return unknown, a, b


def test_centre_of_a_3x3_image_is_the_weighted_mean_of_its_neighbours():
    image = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3) ** 2
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    out = noisy_linear_imputation(image, removed, noise=0)
    v = image[0, 0]
    direct = v[0, 1] + v[1, 0] + v[1, 2] + v[2, 1]
    diagonal = v[0, 0] + v[0, 2] + v[2, 0] + v[2, 2]
    expected = image.clone()
    expected[0, 0, 1, 1] = DIRECT * direct + DIAGONAL * diagonal  # weights sum to 1
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # A corner has 3 neighbours: 2 direct, 1 diagonal, normalised by 5/12.
    corner = torch.zeros(1, 3, 3, dtype=torch.bool)
    corner[0, 0, 0] = True
    got = noisy_linear_imputation(image, corner, noise=0)[0, 0, 0, 0]
    want = (DIRECT * (v[0, 1] + v[1, 0]) + DIAGONAL * v[1, 1]) / (2 * DIRECT + DIAGONAL)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_a_linear_ramp_is_its_own_imputation_in_any_interior_hole():
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(15.0), indexing="ij")
    ramp = torch.stack([0.3 * ys - 0.7 * xs + 2, -1.1 * ys + 0.2 * xs]).double()
    images = ramp.expand(2, 2, 12, 15).clone()
    g = torch.Generator().manual_seed(0)
    removed = torch.rand(2, 12, 15, generator=g) < 0.6
    removed[:, [0, -1], :] = False  # interior holes only: every neighbour is inside
    removed[:, :, [0, -1]] = False
    removed[1, 2:9, 3:12] = True  # and a large block
    out = noisy_linear_imputation(images, removed, noise=0)
    torch.testing.assert_close(out, images, rtol=0, atol=1e-6)


def test_removed_block_matches_a_dense_solve_of_the_paper_system():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 2, 6, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(1, 6, 7, generator=g) < 0.5
    removed[0, 0:3, 0:4] = True  # a block on the border and in the corner
    out = noisy_linear_imputation(image, removed, noise=0)
    for c in range(2):
        unknown, a, b = paper_system(image[0, c], removed[0])
        solution = torch.linalg.solve(a, b)
        got = torch.stack([out[0, c, y, x] for y, x in unknown])
        torch.testing.assert_close(got, solution, rtol=0, atol=1e-7)
        kept = ~removed[0]
        assert torch.equal(out[0, c][kept], image[0, c][kept])


def test_the_residual_of_a_large_hole_meets_the_tolerance():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 40, 40, generator=g, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    removed = (((ys - 18) ** 2 + (xs - 22) ** 2) < 17**2).expand(2, 40, 40).clone()
    removed[1] = torch.rand(40, 40, generator=g) < 0.9
    out = noisy_linear_imputation(image, removed, noise=0, tol=1e-10)
    ones = torch.ones(1, 1, 40, 40, dtype=torch.float64)
    stencil = torch.tensor([[DIAGONAL, DIRECT, DIAGONAL], [DIRECT, 0, DIRECT],
                            [DIAGONAL, DIRECT, DIAGONAL]], dtype=torch.float64)
    weights = stencil.expand(3, 1, 3, 3)

    def mean_of_neighbours(v):
        total = nn.functional.conv2d(v, weights, padding=1, groups=3)
        degree = nn.functional.conv2d(ones, stencil.reshape(1, 1, 3, 3), padding=1)
        return total / degree

    residual = (out - mean_of_neighbours(out))[removed.unsqueeze(1).expand_as(out)]
    assert residual.abs().max() < 1e-8
    with pytest.warns(UserWarning, match="max_iter"):
        noisy_linear_imputation(image, removed, noise=0, max_iter=3)


def test_noise_statistics_and_generators():
    image = torch.full((4, 3, 32, 32), 0.3, dtype=torch.float64)
    removed = torch.zeros(4, 32, 32, dtype=torch.bool)
    removed[:, 4:28, 2:30] = True
    out = noisy_linear_imputation(image, removed, noise=0.5, generator=0)
    mask = removed.unsqueeze(1).expand_as(out)
    assert torch.equal(out[~mask], image[~mask])  # kept pixels untouched
    draws = out[mask] - 0.3  # a constant image imputes to itself: the rest is noise
    assert abs(float(draws.mean())) < 4 * 0.5 / draws.numel() ** 0.5
    assert abs(float(draws.std()) - 0.5) < 0.02
    again = noisy_linear_imputation(image, removed, noise=0.5, generator=0)
    other = noisy_linear_imputation(image, removed, noise=0.5, generator=1)
    assert torch.equal(out, again) and not torch.equal(out, other)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(noisy_linear_imputation(image, removed, noise=0.5, generator=g), out)
    # Channels draw independently.
    assert not torch.equal(out[:, 0][removed], out[:, 1][removed])


def test_imputation_errors_dtype_and_device():
    image = torch.rand(1, 3, 4, 4)
    removed = torch.zeros(1, 4, 4, dtype=torch.bool)
    removed[0, 1, 1] = True
    out = noisy_linear_imputation(image, removed)
    assert out.dtype == torch.float32 and out.device == image.device
    assert noisy_linear_imputation(image.half(), removed).dtype == torch.float16
    with pytest.raises(ValueError, match="at least one pixel"):
        noisy_linear_imputation(image, torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        noisy_linear_imputation(image, removed.float())
    with pytest.raises(ValueError, match="does not match"):
        noisy_linear_imputation(image, removed[:, :3])
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_imputation(image, removed, noise=-1)
    with pytest.raises(TypeError, match="generator"):
        noisy_linear_imputation(image, removed, generator="seed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda():
    image = torch.rand(2, 3, 16, 16, device="cuda")
    removed = torch.rand(2, 16, 16, device="cuda") < 0.5
    out = noisy_linear_imputation(image, removed, generator=0)
    assert out.device == image.device
    model = PixelLinear(torch.rand(16, 16, device="cuda"))
    curves = road(model, image, torch.rand(2, 1, 4, 4, device="cuda"), target=0,
                  softmax=False, generator=0)
    assert curves.curves.device == image.device


# Three bright pixels on a zero image, far apart; the model reads only them.
BRIGHT = {(2, 2): 3.0, (2, 7): 2.0, (7, 4): 1.0}


def bright_setting(two_class=False):
    weights = torch.zeros(10, 10, dtype=torch.float64)
    image = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    good_map = torch.full((1, 1, 10, 10), -1.0, dtype=torch.float64)
    for (y, x), v in BRIGHT.items():
        weights[y, x], image[0, 0, y, x], good_map[0, 0, y, x] = v, 1.0, v
    image[0, 0, 2, 3] = 1.0  # unread, but the direct neighbour of (2, 2)
    model = TwoClassPixelLinear(weights) if two_class else PixelLinear(weights)
    return model, image, good_map


def test_morf_and_lerf_curves_in_closed_form():
    model, image, good_map = bright_setting()
    percentiles = (1, 2, 3, 50)  # 1, 2, 3 and 50 of the 100 pixels
    morf = road(model, image, good_map, target=0, percentiles=percentiles, noise=0,
                softmax=False)
    assert isinstance(morf, RoadCurves)
    # (2, 2) removed: 1/6 of its bright neighbour (2, 3), so 3 / 6; (2, 7) and
    # (7, 4) removed have zero neighbours only; at 50 % nothing bright is left.
    expected = torch.tensor([[0.5 + 2 + 1, 0.5 + 0 + 1, 0.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(morf.curves, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(morf.percentiles, torch.tensor([1.0, 2, 3, 50],
                                                              dtype=torch.float64))
    torch.testing.assert_close(morf.mean, expected.mean(1), rtol=0, atol=1e-7)
    # LeRF removes background from the end of the order; the bright pixels stay.
    lerf = road(model, image, good_map, target=0, noise=0, softmax=False,
                most_relevant_first=False)
    torch.testing.assert_close(lerf.curves, torch.full((1, 9), 6.0, dtype=torch.float64))
    assert lerf.mean.item() >= morf.mean.item()
    two, image, good_map = bright_setting(two_class=True)
    soft = road(two, image, good_map, target=0, percentiles=percentiles, noise=0)
    torch.testing.assert_close(soft.curves, torch.sigmoid(expected), rtol=0, atol=1e-7)


def test_ties_follow_pixel_order_and_shapes():
    model, image, _ = bright_setting()
    flat_map = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    # MoRF of a constant map removes row-major from (0, 0): 30 % reaches row
    # 2 and all of (2, 2), (2, 3), (2, 7) but not (7, 4).
    morf = road(model, image, flat_map, target=0, percentiles=(30,), noise=0, softmax=False)
    torch.testing.assert_close(morf.curves, torch.tensor([[1.0]], dtype=torch.float64),
                               rtol=0, atol=1e-7)
    # LeRF removes from the end: 30 % is rows 7 to 9, (7, 4) among them.
    lerf = road(model, image, flat_map, target=0, percentiles=(30,), noise=0, softmax=False,
                most_relevant_first=False)
    torch.testing.assert_close(lerf.curves, torch.tensor([[5.0]], dtype=torch.float64),
                               rtol=0, atol=1e-7)
    x = torch.rand(3, 3, 8, 8)
    cam = torch.rand(3, 1, 2, 2)
    result = road(PixelLinear(torch.rand(8, 8)), x, cam, target=0, percentiles=(0, 25, 75))
    assert result.curves.shape == (3, 3) and result.mean.shape == (3,)
    assert result.curves.dtype == torch.float32 and result.percentiles.shape == (3,)


def test_morf_of_a_map_is_lerf_of_its_negation_and_chunks_do_not_matter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 64, 5)).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    maps = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    target = [1, 3]
    one = road(model, x, maps, target, noise=0, perturbations_per_eval=1)
    many = road(model, x, maps, target, noise=0, perturbations_per_eval=9)
    torch.testing.assert_close(one.curves, many.curves)
    lerf = road(model, x, -maps, target, noise=0, most_relevant_first=False)
    torch.testing.assert_close(one.curves, lerf.curves)
    alone = road(model, x[1:], maps[1:], [3], noise=0)
    torch.testing.assert_close(alone.curves[0], one.curves[1])
    noisy = road(model, x, maps, target, generator=0)
    assert torch.equal(noisy.curves, road(model, x, maps, target, generator=0).curves)
    assert not torch.equal(noisy.curves, one.curves)


def test_road_errors():
    model, image, good_map = bright_setting()
    with pytest.raises(ValueError, match="percentiles"):
        road(model, image, good_map, target=0, percentiles=(10, 100))
    with pytest.raises(ValueError, match="percentiles"):
        road(model, image, good_map, target=0, percentiles=())
    with pytest.raises(ValueError, match="attributions"):
        road(model, image, good_map[0], target=0)
    with pytest.raises(ValueError, match="2 images"):
        road(model, image, good_map.expand(2, 1, 10, 10), target=0)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        road(model, image, good_map, target=0, perturbations_per_eval=0)
