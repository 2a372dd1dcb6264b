"""The multi-GPU path of the CLIP analysis, run on CPU actors: image embedding sharded over Ray actors must
equal embedding in one process. Same actor code as on GPUs, with gpus_per_actor=0."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import clip


@pytest.mark.ray
def test_sharded_ray_embedding_equals_in_process(ray_local, fmnist):
    encoder = clip.load_encoder(clip.Weights(clip.TEST_MODEL, clip.RANDOM, None), "cpu", batch_size=32)
    images = fmnist.test_x[:101]  # odd, so the two shards differ in size and end mid-batch
    expected = encoder.encode_images(images)
    calls = []
    with clip.RayImageEncoder(encoder, num_actors=2, gpus_per_actor=0) as sharded:
        got = sharded.encode_images(images, progress=lambda done, total: calls.append((done, total)))
        assert np.array_equal(sharded.encode_text(["a photo of a bag"]), encoder.encode_text(["a photo of a bag"]))
        actors = sharded.actors
    assert got.shape == expected.shape == (101, 32)
    # Per-image results do not depend on the batch an image shares (eval mode), up to float summation order.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2 and calls[0][0] in (50, 51) and calls[1] == (101, 101)  # shard sizes 50 and 51
    with pytest.raises(ray_local.exceptions.RayActorError):  # the context manager released the actors' CPUs
        ray_local.get(actors[0].encode.remote(images, 0, 1))
