"""benchmarks/faithfulness.py gives the same table under torchrun with two
processes (gloo, CPU) as in one process, with every metric column."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--tables", "small_vgg", "--n-images", "4", "--batch-size", "2", "--step", "512",
    "--shapley-samples", "3", "--infidelity-samples", "2", "--sensitivity-samples", "1",
    "--road-percentiles", "30", "70", "--sanity-images", "2", "--sanity-perturbation",
    "--smoothing-samples", "1", "--grid", "2", "--no-plots",
    "--methods", "XGrad-CAM", "Score-CAM", "LIFT-CAM", "Guided Grad-CAM++",
    "Integrated Gradients", "Random map",
]


def run(command, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(command + SMALL + ["--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (out / "faithfulness.md").read_text().count("## SmallVGG") == 1
    return json.loads((out / "faithfulness_small_vgg.json").read_text())


def test_two_processes_give_the_single_process_table(tmp_path):
    script = str(ROOT / "benchmarks" / "faithfulness.py")
    single = run([sys.executable, script], tmp_path / "single")
    double = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc_per_node", "2", script], tmp_path / "double")
    assert single["config"]["world_size"] == 1 and double["config"]["world_size"] == 2
    assert single["table"].keys() == double["table"].keys()
    for method, row in single["table"].items():
        other = double["table"][method]
        assert row.keys() == other.keys()
        for key, value in row.items():
            if key != "ms_per_image":
                assert other[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (method, key)
    for method, curves in single["curves"].items():
        for name in ("deletion", "insertion"):
            assert double["curves"][method][name] == pytest.approx(curves[name], rel=1e-6)
    for method, row in single["by_scale"].items():
        assert double["by_scale"][method] == pytest.approx(row, rel=1e-6, nan_ok=True)
    assert double["shapley_self_rho"] == pytest.approx(single["shapley_self_rho"], rel=1e-6)
    # Every metric column is there for a CAM, and only the defined ones otherwise.
    assert {"pointing", "energy", "discrimination", "mispointing", "average_drop", "increase",
            "deletion", "insertion", "road_morf", "road_lerf", "infidelity",
            "sensitivity_max", "randomization", "random_logit", "conservation", "sensitivity",
            "shap_rho", "ms_per_image"} == set(single["table"]["LIFT-CAM"])
    assert "randomization" in single["table"]["Score-CAM"]  # --sanity-perturbation
    assert "conservation" not in single["table"]["Integrated Gradients"]
    # The random map ignores the model: randomising it changes nothing.
    assert single["table"]["Random map"]["randomization"] == pytest.approx(1.0)
