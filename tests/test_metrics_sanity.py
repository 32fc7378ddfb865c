"""Sanity checks (Adebayo et al., NeurIPS 2018; Sixt et al., ICML 2020): the
cascade's order, the caller's model left alone, maps that ignore the model,
the gradient of a linear model in closed form, and Spearman against scipy."""
import pytest
import torch
from torch import nn

from captum_xcam.metrics import (
    RandomizationResult,
    cascade_order,
    cascading_randomization,
    random_logit,
    rank_correlation,
    spearman,
)
from captum_xcam.metrics.sanity import reinitialise

scipy_stats = pytest.importorskip("scipy.stats")


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.Flatten(), nn.Linear(4 * 36, 5)).double()


class OutOfOrder(nn.Module):
    r"""Registers the head before the stem, shares one layer between two calls,
    and owns a module that the forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.unused = nn.Linear(2, 2)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.shared = nn.BatchNorm2d(4)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.shared(self.stem(x))
        a = self.shared(a * self.scale)
        return self.head(a.mean((2, 3)))


def sobel(x: torch.Tensor) -> torch.Tensor:
    r"""An edge detector of the input: the model plays no part."""
    kernel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype)
    gray = x.mean(1, keepdim=True)
    gx = nn.functional.conv2d(gray, kernel.reshape(1, 1, 3, 3), padding=1)
    gy = nn.functional.conv2d(gray, kernel.T.reshape(1, 1, 3, 3), padding=1)
    return (gx**2 + gy**2).sqrt()


def gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    x = x.clone().requires_grad_()
    output = model(x)
    picked = output[torch.arange(len(x)), torch.as_tensor(target).expand(len(x))]
    return torch.autograd.grad(picked.sum(), x)[0]


def test_stages_follow_the_calls_from_the_output_end():
    model = small_cnn()
    assert cascade_order(model, torch.rand(1, 3, 6, 6, dtype=torch.float64)) == ["4", "2", "0"]
    out_of_order = OutOfOrder()
    # Calls: root (owns scale), stem, shared (twice), head; "unused" never.
    assert cascade_order(out_of_order, torch.rand(2, 1, 5, 5)) == ["head", "shared", "stem", ""]


def test_a_map_that_ignores_the_model_stays_at_one():
    model = small_cnn()
    x = torch.rand(3, 3, 6, 6, dtype=torch.float64)
    result = cascading_randomization(lambda m, inputs, t: sobel(inputs), model, x, target=0)
    assert isinstance(result, RandomizationResult)
    assert result.stages == ["4", "2", "0"]
    torch.testing.assert_close(result.similarity, torch.ones(3, 3, dtype=torch.float64))


def test_the_gradient_of_a_linear_model_in_closed_form():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    x = torch.rand(2, 2, 4, 4, dtype=torch.float64)
    target = [0, 2]
    old = model[1].weight.detach().clone()
    result = cascading_randomization(gradient, model, x, target, seed=5, reduce="sum")
    assert result.stages == ["1"]
    # The map of a linear model is its weight row, summed over channels; the
    # stage re-initialises the layer as reset_parameters does under seed 5.
    fresh = nn.Linear(2 * 4 * 4, 3).double()
    torch.manual_seed(5)
    fresh.reset_parameters()
    for i, t in enumerate(target):
        before = old[t].reshape(2, 16).sum(0).numpy()
        after = fresh.weight.detach()[t].reshape(2, 16).sum(0).numpy()
        rho = scipy_stats.spearmanr(before, after).statistic
        assert result.similarity[i, 0].item() == pytest.approx(rho, abs=1e-12)
        assert abs(rho) < 0.9  # the test can tell a changed map from the same one
    absolute = cascading_randomization(gradient, model, x, target, seed=5,
                                       similarity="spearman_abs")
    before = old[0].reshape(2, 16).sum(0).abs().numpy()
    after = fresh.weight.detach()[0].reshape(2, 16).sum(0).abs().numpy()
    rho = scipy_stats.spearmanr(before, after).statistic
    assert absolute.similarity[0, 0].item() == pytest.approx(rho, abs=1e-12)


def test_the_callers_model_and_random_state_are_untouched():
    model = OutOfOrder().train()
    model.shared.running_mean.fill_(0.5)
    model.head.eval()  # a mixed mode, kept as it is
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    x = torch.rand(2, 1, 5, 5)
    rng = torch.get_rng_state()
    seen = []

    def explain(m, inputs, target):
        seen.append(m)
        return sobel(inputs) * m.head.weight.detach().abs().sum()

    result = cascading_randomization(explain, model, x, target=0)
    assert all(m is not model for m in seen) and len({id(m) for m in seen}) == 1
    assert result.similarity.shape == (2, 4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_reinitialisation_keeps_or_resets_buffers_and_groups_stages():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.running_mean.fill_(0.7)
    reinitialise(bn, seed=0)
    assert torch.equal(bn.weight, torch.ones(3)) and torch.equal(bn.running_mean,
                                                                 torch.full((3,), 0.7))
    reinitialise(bn, seed=0, reset_buffers=True)
    assert torch.equal(bn.running_mean, torch.zeros(3))
    # Without reset_parameters, a parameter is redrawn around its own statistics.
    holder = nn.Module()
    holder.p = nn.Parameter(torch.full((1000,), 3.0) + torch.randn(1000))
    before = holder.p.detach().clone()
    reinitialise(holder, seed=0)
    assert not torch.equal(holder.p, before)
    redrawn = holder.p.detach()
    assert abs(float(redrawn.mean()) - 3.0) < 0.2 and abs(float(redrawn.std()) - 1.0) < 0.1
    model = small_cnn()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    grouped = cascading_randomization(gradient, model, x, 1, layers=[["4", "2"], "0"])
    assert grouped.stages == ["4+2", "0"] and grouped.similarity.shape == (2, 2)
    given = cascading_randomization(gradient, model, x, 1, layers=[["4", "2"], "0"],
                                    attributions=gradient(model, x, 1))
    torch.testing.assert_close(given.similarity, grouped.similarity)


def test_randomization_errors():
    model = small_cnn()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    explain = gradient
    with pytest.raises(ValueError, match="not a submodule"):
        cascading_randomization(explain, model, x, 0, layers=["fc"])
    with pytest.raises(ValueError, match="owns no parameters"):
        cascading_randomization(explain, model, x, 0, layers=["1"])
    with pytest.raises(ValueError, match="nothing to randomise"):
        cascading_randomization(explain, model, x, 0, layers=[])
    with pytest.raises(ValueError, match="similarity"):
        cascading_randomization(explain, model, x, 0, similarity="ssim")
    with pytest.raises(ValueError, match="inputs"):
        cascading_randomization(explain, model, x[0], 0)


def test_spearman_against_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 40), generator=g).double()  # many ties
    b = torch.randint(0, 6, (5, 40), generator=g).double()
    b[0] = a[0] * 2 + 1  # the same order
    b[1] = -a[1]  # the reverse order
    rho = spearman(a, b)
    for i in range(5):
        assert rho[i].item() == pytest.approx(
            scipy_stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=1e-12)
    assert rho[0].item() == pytest.approx(1.0) and rho[1].item() == pytest.approx(-1.0)
    torch.testing.assert_close(rho, rank_correlation(a, b))
    constant = spearman(torch.ones(1, 5), torch.rand(1, 5))
    assert constant.item() == 0.0  # no order: 0, as rank_correlation
    with pytest.raises(ValueError, match="NaN"):
        spearman(torch.tensor([[0.0, float("nan")]]), torch.rand(1, 2))


def test_random_logit_draws_another_class_uniformly():
    asked = []

    def explain_target(inputs, target):
        asked.append(target.clone())
        return sobel(inputs)  # the same map for every class

    x = torch.rand(3000, 1, 4, 4)
    same = random_logit(explain_target, x, 0, num_classes=4, generator=0)
    torch.testing.assert_close(same, torch.ones(3000, dtype=torch.float64))
    target, other = asked
    assert torch.equal(target, torch.zeros(3000, dtype=torch.long))
    counts = torch.bincount(other, minlength=4)
    assert counts[0] == 0 and all(abs(int(c) - 1000) < 120 for c in counts[1:])
    again = random_logit(explain_target, x, 0, num_classes=4, generator=0)
    assert torch.equal(asked[-1], other) and torch.equal(again, same)


def test_random_logit_of_a_linear_model_with_two_classes():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    rho = random_logit(lambda inputs, t: gradient(model, inputs, t), x, [0, 1], 2,
                       generator=torch.Generator().manual_seed(0))
    w = model[1].weight.detach()
    expected = scipy_stats.spearmanr(w[0].numpy(), w[1].numpy()).statistic
    torch.testing.assert_close(rho, torch.full((2,), expected, dtype=torch.float64))
    given = random_logit(lambda inputs, t: gradient(model, inputs, t), x, [0, 1], 2,
                         attributions=gradient(model, x, [0, 1]))
    torch.testing.assert_close(given, rho)
    with pytest.raises(ValueError, match="num_classes"):
        random_logit(lambda inputs, t: inputs, x, 0, 1)
    with pytest.raises(ValueError, match="one class"):
        random_logit(lambda inputs, t: inputs, x, [0, 2], 2)
    with pytest.raises(ValueError, match="class index"):
        random_logit(lambda inputs, t: inputs, x, None, 2)


def test_a_container_stands_for_the_modules_inside_it_that_own_parameters():
    # Naming a block re-initialises each module in it that owns parameters,
    # in modules() order: the same cascade as naming them one by one.
    model = nn.Sequential(small_cnn()[:3], nn.Flatten(), nn.Linear(4 * 36, 5)).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    by_block = cascading_randomization(gradient, model, x, 1, layers=["2", "0"])
    by_owner = cascading_randomization(gradient, model, x, 1, layers=["2", ["0.0", "0.2"]])
    torch.testing.assert_close(by_block.similarity, by_owner.similarity)
    assert by_block.stages == ["2", "0"]
