"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own JSON schema) and matches what the README says."""
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def validate(config):
    """What `ray up` does first: fill the provider's defaults, then check against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(copy.deepcopy(config)))


def test_validates_against_rays_schema(cluster):
    validate(cluster)


@pytest.mark.parametrize("breakage", ["unknown_key", "no_resources"])
def test_schema_check_catches_a_broken_config(cluster, breakage):
    broken = copy.deepcopy(cluster)
    if breakage == "unknown_key":
        broken["available_node_types"]["gpu_worker"]["gpus"] = 4
    else:
        del broken["available_node_types"]["head"]["resources"]
    with pytest.raises((ValueError, RuntimeError, jsonschema.ValidationError)):
        validate(broken)


def test_gpu_workers_head_and_install(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith("g5.")
    assert types["gpu_worker"]["max_workers"] >= 1 and types["gpu_worker"]["min_workers"] == 0
    setup = "\n".join(cluster["setup_commands"])
    assert "pip install -q -e ~/fashion-mnist-tune" in setup and "dataset-fashion-mnist" in setup
    assert "/mnt/shared" in setup  # the shared storage every node writes checkpoints to
    assert "/home/ubuntu/fashion-mnist-tune" in cluster["file_mounts"]
