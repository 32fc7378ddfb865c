"""The model-zoo conformance checks of benchmarks/zoo.py on a representative
subset (``zoo.QUICK``): every hand-written idiom, ResNet inner blocks,
ConvNeXt's last stage (torchvision and timm) and CNNs of other families, each
method against the independent reference written there."""

import pytest
import torch

pytest.importorskip("timm")

from benchmarks import zoo  # noqa: E402

WHOLE_MODEL = {"hand-written/data_dependent_branch"}  # untraceable: must fall back
FAST_PATH_WARNINGS = {"WholeModelReplayWarning", "LiftCompletenessWarning"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    r"""Small models: one thread is faster than two that wait for each other;
    the later tests get the threads back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=[case.name for case in zoo.QUICK])
def row(request, one_thread):
    return zoo.check_case(zoo.case_named(request.param))


def test_the_case_ran_in_float64(row):
    assert row.status in ("correct", "incorrect"), row.note
    assert row.dtype == "float64"


def test_every_method_equals_its_reference(row):
    wrong = {name: entry.exception or entry.error
             for name, entry in row.methods.items() if not entry.correct}
    assert not wrong


def test_lift_cam_is_complete(row):
    lift = row.methods["LIFT-CAM"]
    assert lift.exception is None, lift.exception
    assert lift.error <= 1e-4


def test_model_left_as_found(row):
    assert row.model_as_found, row.changes[:5]


def test_path(row):
    categories = [w.category for w in row.warnings]
    if row.case in WHOLE_MODEL:
        assert row.path == "whole model" and row.reason
        fallback = [w for w in row.warnings if w.category == "WholeModelReplayWarning"]
        assert len(fallback) == 1  # once, for all the methods
        assert row.reason[:40] in fallback[0].message
    else:
        assert row.path == "tail only", row.reason
        assert row.methods["Ablation-CAM"].head_runs == 1
        assert not FAST_PATH_WARNINGS & set(categories), row.warnings
