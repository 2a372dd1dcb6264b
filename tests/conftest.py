"""Shared fixtures. Integration tests share one real local Ray instance (num_cpus=2) and one real smoke
search (results in a temp directory), so the suite pays for Ray start-up and the search only once."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_script(name: str):
    """Import experiments/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kill_processes(procs) -> None:
    """SIGKILL each psutil.Process (gone ones are skipped) and wait for them: a test's own Ray head and nodes."""
    import psutil
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


@pytest.fixture(scope="session")
def fmnist():
    from distributed.config import DataConfig
    from distributed.data import load
    return load(DataConfig())


@pytest.fixture(scope="session")
def ray_local():
    import ray
    from distributed.ray_init import init_ray
    if not ray.is_initialized():
        init_ray(None, num_cpus=2, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run(ray_local, tmp_path_factory):
    """A finished real smoke search: 4 trials, 3 folds, 600 images. Returns (run_dir, exit code)."""
    storage = tmp_path_factory.mktemp("runs")
    code = load_script("tune").main(["--preset", "smoke", "--name", "smoke", "--storage-path", str(storage)])
    return storage / "smoke", code


class S3Server:
    """A real S3 endpoint on loopback (moto's server): pyarrow, Ray and the CLIs talk S3 to it over HTTP."""

    def __init__(self, server, endpoint: str):
        self.server, self.endpoint = server, endpoint
        # What a process needs to use this endpoint instead of AWS: pyarrow reads AWS_ENDPOINT_URL.
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self, **kwargs):
        import pyarrow.fs
        return pyarrow.fs.S3FileSystem(endpoint_override=self.endpoint, access_key="test", secret_key="test",
                                       region="us-east-1", **kwargs)

    def make_bucket(self, name: str) -> None:
        self.filesystem(allow_bucket_creation=True).create_dir(name)

    def objects(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under bucket/prefix."""
        import pyarrow.fs
        fs = self.filesystem()
        return {i.path: i.size for i in fs.get_file_info(pyarrow.fs.FileSelector(prefix, recursive=True,
                                                                                 allow_not_found=True))
                if i.type == pyarrow.fs.FileType.File}

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(key) as f:
            return f.read()


@pytest.fixture(scope="session")
def s3_server():
    """One local S3 server for the session; its env is also set in this process (pyarrow reads it per call)."""
    import os
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(server, f"http://{host}:{port}")
    saved = {k: os.environ.get(k) for k in s3.env}
    os.environ.update(s3.env)
    yield s3
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
