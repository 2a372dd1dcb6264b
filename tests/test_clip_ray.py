"""The multi-GPU path of the CLIP analysis, run on CPU actors: image embedding sharded over Ray actors must
equal embedding in one process. Same actor code as on GPUs, with gpus_per_actor=0."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import clip_encoders, clip_weights


@pytest.mark.ray
def test_sharded_ray_embedding_equals_in_process(ray_local, fmnist):
    weights = clip_weights.Weights(clip_weights.TEST_MODEL, clip_weights.RANDOM, None)
    encoder = clip_encoders.load_encoder(weights, "cpu", batch_size=32)
    images = fmnist.test_x[:101]  # odd, so the two shards differ in size and end mid-batch
    expected = encoder.encode_images(images)
    calls = []
    with clip_encoders.RayImageEncoder(encoder, num_actors=2, gpus_per_actor=0) as sharded:
        got = sharded.encode_images(images, progress=lambda done, total: calls.append((done, total)))
        assert np.array_equal(sharded.encode_text(["a photo of a bag"]), encoder.encode_text(["a photo of a bag"]))
        actors = sharded.actors
    assert got.shape == expected.shape == (101, 32)
    # Per-image results do not depend on the batch an image shares (eval mode), up to float summation order.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2 and calls[0][0] in (50, 51) and calls[1] == (101, 101)  # shard sizes 50 and 51
    with pytest.raises(ray_local.exceptions.RayActorError):  # the context manager released the actors' CPUs
        ray_local.get(actors[0].encode.remote(images, 0, 1))


# The CLI in a fresh process whose Ray instance declares 2 GPUs that do not exist: the driver of a cluster
# with a CPU-only head and GPU workers. Hiding the devices after Ray has started keeps the driver CUDA-free on
# a GPU box too (Ray refuses to start with 2 GPUs and CUDA_VISIBLE_DEVICES empty; torch reads it lazily).
FAKE_GPU_DRIVER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from distributed.ray_init import init_ray
init_ray(None, num_cpus=2, num_gpus=2, log_to_driver=False, configure_logging=False)
os.environ["CUDA_VISIBLE_DEVICES"] = ""
from tests.conftest import load_script
sys.exit(load_script("clip_zeroshot").main(sys.argv[2:]))
"""


@pytest.mark.ray
def test_num_gpus_2_on_a_driver_without_cuda_keeps_the_text_encoder_on_the_cpu(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray instance of its own
    out = subprocess.run([sys.executable, "-c", FAKE_GPU_DRIVER, str(ROOT), "--model", clip_weights.TEST_MODEL,
                          "--limit", "40", "--num-gpus", "2", "--no-probe", "--top-k", "4", "--queries", "a bag",
                          "--batch-size", "16", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 40 and 0.0 <= metrics["acc"] <= 1.0 and len(metrics["retrieval"]) == 1
    # both actors got a (fake) GPU each and ran; the text encoder stayed on the driver's CPU
    assert metrics["device"].startswith("images on 2 Ray actors (") and metrics["device"].endswith("), text on cpu")
    assert f"{clip_weights.TEST_MODEL} (random) on {metrics['device']}: 40 test images" in out.stdout
