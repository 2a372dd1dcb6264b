"""What a search can train on (distributed/cluster.py): the GPU probe before Ray starts, the most an
autoscaler config reaches, and capacity() of a real local Ray instance with and without such a config."""
import json

import pytest

from distributed import cluster
from distributed.cluster import capacity, read_autoscaling_config, scalable_resources, visible_gpus

# cluster.yaml's shape, with the resources `ray up` fills in on the head: a 0-CPU head, 4-GPU workers
RAY_UP = {
    "max_workers": 4, "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0},
        "gpu_worker": {"min_workers": 0, "max_workers": 4, "resources": {"CPU": 48, "GPU": 4, "memory": 1e11}},
    },
}


@pytest.mark.parametrize("env, nvml, expected", [
    (None, 4, 4),          # every GPU of the machine
    ("", 4, 0),            # CUDA_VISIBLE_DEVICES="" turns them off, as for Ray and torch
    ("NoDevFiles", 4, 0),  # what some schedulers set for "no GPU"; Ray reads it as none too
    ("0,1", 4, 2),         # a subset
    ("0,1,2,3,4,5", 4, 4),  # more ids than devices: Ray caps at the device count
    (None, 0, 0),          # no NVIDIA driver
])
def test_visible_gpus_follows_ray_rules(monkeypatch, env, nvml, expected):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    monkeypatch.setattr(cluster, "nvml_device_count", lambda: nvml)
    assert visible_gpus() == expected


def test_nvml_probe_agrees_with_rays_own_detection():
    """The ctypes probe counts what Ray's detection (its vendored pynvml) counts on this machine."""
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
    assert cluster.nvml_device_count() == NvidiaGPUAcceleratorManager.get_current_node_num_accelerators()


@pytest.mark.parametrize("config, expected", [
    (RAY_UP, {"CPU": 4 * 48, "GPU": 4 * 4}),
    # the global max_workers caps the worker nodes: 3 of the 4
    ({**RAY_UP, "max_workers": 3}, {"CPU": 3 * 48, "GPU": 3 * 4}),
    # a node type without max_workers gets the global one (as the autoscaler fills it in); the head counts once
    ({"max_workers": 2, "head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 8, "GPU": 1}}, "w": {"resources": {"CPU": 4}}}}, {"CPU": 8 + 2 * 4, "GPU": 1}),
    # two worker types under one cap of 3 nodes: the richest in each resource first
    ({"max_workers": 3, "head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 2}},
        "cpu": {"max_workers": 5, "resources": {"CPU": 32}},
        "gpu": {"max_workers": 2, "resources": {"CPU": 8, "GPU": 8}}}}, {"CPU": 2 + 3 * 32, "GPU": 2 * 8}),
])
def test_scalable_resources_known_answers(config, expected):
    assert scalable_resources(config) == expected


def test_read_autoscaling_config(tmp_path):
    (tmp_path / "ray_up.json").write_text(json.dumps(RAY_UP))  # `ray up` writes JSON
    (tmp_path / "cluster.yaml").write_text("max_workers: 1\nhead_node_type: h\navailable_node_types:\n"
                                           "  h: {resources: {CPU: 1}}\n")
    (tmp_path / "garbled.yaml").write_text("max_workers: [1,\n")
    (tmp_path / "other.yaml").write_text("just: text\n")
    assert read_autoscaling_config(tmp_path / "ray_up.json") == RAY_UP
    assert read_autoscaling_config(tmp_path / "cluster.yaml")["available_node_types"] == {
        "h": {"resources": {"CPU": 1}}}
    for name in ("garbled.yaml", "other.yaml", "missing.yaml"):
        assert read_autoscaling_config(tmp_path / name) is None


@pytest.mark.ray
def test_capacity_of_a_real_instance_with_and_without_an_autoscaler_config(ray_local, tmp_path):
    now = {r: float(ray_local.cluster_resources().get(r, 0)) for r in ("CPU", "GPU")}
    assert capacity(tmp_path / "none.yaml") == now  # no autoscaler: what is there now
    (tmp_path / "garbled.yaml").write_text("{{{")
    assert capacity(tmp_path / "garbled.yaml") == now
    # this driver is on the head node of the instance, as `ray job submit`'s is: the node types count
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(json.dumps(RAY_UP))
    assert capacity(path) == {"CPU": max(now["CPU"], 4 * 48.0), "GPU": max(now["GPU"], 16.0)}
    # what is up now counts when it is more than the config reaches (a node joined by hand)
    path.write_text(json.dumps({"max_workers": 0, "head_node_type": "h",
                                "available_node_types": {"h": {"resources": {"CPU": 0}}}}))
    assert capacity(path) == now
