"""A GPU that Ray assigns but torch cannot use fails at once, with one line (issue: first run on a GPU box).

This CPU box declares a GPU to a real Ray instance (as a node with a broken driver would look to Ray); tune.py
must refuse before the run directory exists, naming the GPU, the driver and torch's CUDA build."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch cannot use CUDA")
def test_a_declared_gpu_torch_cannot_use_fails_in_one_line(monkeypatch, tmp_path):
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster
    from tests.test_cluster import free_port
    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"{get_node_ip_address()}:{port}")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "gcs_server_port": port,
                                                           "dashboard_port": free_port()})
    try:
        out = subprocess.run([sys.executable, str(ROOT / "experiments" / "tune.py"), "--preset", "smoke",
                              "--address", cluster.address, "--num-gpus", "1", "--storage-path", str(tmp_path),
                              "--name", "gpu"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ})
    finally:
        cluster.shutdown()
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [l for l in out.stderr.strip().splitlines() if l.startswith("tune.py: error:")]
    assert len(lines) == 1, out.stderr[-2000:]
    line = lines[0]
    assert "--num-gpus 1: Ray assigned GPU 0" in line and "torch.cuda.is_available() is False" in line
    assert f"torch {torch.__version__}" in line and "NVIDIA driver" in line
    if torch.version.cuda:
        assert f"CUDA {torch.version.cuda}" in line
    assert not (tmp_path / "gpu").exists()  # refused before the run directory was made
