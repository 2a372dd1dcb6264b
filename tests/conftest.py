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


@pytest.fixture(scope="session")
def fmnist():
    from distributed.config import DataConfig
    from distributed.data import load
    return load(DataConfig())


@pytest.fixture(scope="session")
def ray_local():
    import ray
    from distributed.tuner import init_ray
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
