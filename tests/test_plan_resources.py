"""plan_resources: slots and per-worker shares from the flags and the cluster (a pure function, no Ray)."""
import pytest

from distributed.config import PRESETS, ConfigError, override
from distributed.resources import plan_resources

FULL = PRESETS["full"]  # 5 folds, 40 trials


@pytest.mark.parametrize("cpus, cpu_per_worker", [(16, 0.79), (8, 0.39), (48, 1.0)])
def test_every_gpu_of_a_4_gpu_box_gets_a_trial(cpus, cpu_per_worker):
    res = plan_resources(FULL, {"CPU": cpus, "GPU": 4})
    assert res["concurrent"] == 4 and res["gpu"] == pytest.approx(0.2)
    assert res["cpu"] == pytest.approx(cpu_per_worker) and res["limit"] is None
    assert 4 * 5 * res["cpu"] + 4 * 0.01 <= cpus  # the 4 slots and their trial clients fit


def test_too_few_cpus_for_every_gpu_says_why():
    res = plan_resources(FULL, {"CPU": 4, "GPU": 4})  # 0.19 CPU per worker would starve the GPUs
    assert res["cpu"] == 0.25 and res["concurrent"] == 3
    assert res["limit"].startswith("3 trial(s) at once, not 4: 4 CPUs hold 3 x 5 fold workers at 0.25 CPU")


def test_explicit_cpus_per_worker_wins_and_cpu_only_fills_the_machine():
    res = plan_resources(override(FULL, cpus_per_worker=1.0), {"CPU": 16, "GPU": 4})
    assert res["concurrent"] == 3 and res["cpu"] == 1.0 and "lower --cpus-per-worker" in res["limit"]
    res = plan_resources(PRESETS["quick"], {"CPU": 2, "GPU": 0})
    assert res["concurrent"] == 1 and res["gpu"] == 0 and res["cpu"] == pytest.approx(0.398)
    assert res["limit"] is None


def test_more_gpus_than_offered_is_refused():
    with pytest.raises(ConfigError, match=r"--num-gpus 2: the Ray cluster offers 1 GPU"):
        plan_resources(override(FULL, num_gpus=2), {"CPU": 8, "GPU": 1})
