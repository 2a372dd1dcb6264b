"""Fashion-MNIST on the driver: find the IDX files, read and validate them, subset, fingerprint.

The driver reads the data once; `distributed.tuner` puts the uint8 arrays in the Ray object store once
and every fold worker reads them zero-copy from there. No worker reads files or downloads.
No Ray or torch import here.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distributed.config import EXIT_BAD_INPUT, EXIT_OK, NUM_CLASSES, ConfigError, DataConfig

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
TORCHVISION_CACHE = os.path.expanduser("~/.cache/fashion-mnist")  # root= for torchvision's downloader
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNT = {"train": 60_000, "test": 10_000}
_MAGIC = {0x00000803: 3, 0x00000801: 1}  # unsigned-byte IDX with 3 dims (images) or 1 dim (labels)


class DataError(ConfigError):
    """Missing, truncated or corrupt dataset files (exit code 2 in the CLIs)."""


@dataclass(frozen=True)
class FashionMNIST:
    train_x: np.ndarray  # (N, 28, 28) uint8
    train_y: np.ndarray  # (N,) int64 in 0..9
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode one uncompressed IDX payload, validating magic, dims and length."""
    if len(raw) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(raw)} bytes, no header)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic not in _MAGIC:
        raise DataError(f"{name}: bad IDX magic number 0x{magic:08x} (expected 0x00000803 or 0x00000801)")
    ndim = _MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{name}: truncated or padded IDX body ({len(raw) - header} bytes, expected {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path) -> np.ndarray:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    return parse_idx(raw, str(path))


def _locate(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem, directory / "FashionMNIST" / "raw" / f"{stem}.gz",
                      directory / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def candidate_dirs(data_dir: str | None) -> list[Path]:
    """Search order: --data-dir, $FASHION_MNIST_DIR, the Debian package, the torchvision cache."""
    if data_dir:  # an explicit directory is the only place looked at: no silent fallback
        return [Path(data_dir)]
    dirs = [os.environ.get("FASHION_MNIST_DIR"), DEBIAN_DIR, TORCHVISION_CACHE]
    return [Path(d) for d in dirs if d]


def find_data_dir(data_dir: str | None) -> Path:
    dirs = candidate_dirs(data_dir)
    for d in dirs:
        if all(_locate(d, stem) for stem in FILES.values()):
            return d
    if data_dir:
        missing = [s for s in FILES.values() if not _locate(Path(data_dir), s)]
        raise DataError(f"--data-dir {data_dir}: missing Fashion-MNIST files {', '.join(missing)}")
    raise DataError(
        f"no Fashion-MNIST files in {', '.join(map(str, dirs))}: install the Debian package "
        f"dataset-fashion-mnist, pass --data-dir, or --download")


def download(root: str = TORCHVISION_CACHE) -> Path:
    """torchvision's downloader, for machines with internet and no Debian package."""
    try:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST
        TVFashionMNIST(root, train=True, download=True)
        TVFashionMNIST(root, train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"download of Fashion-MNIST into {root} failed ({type(e).__name__}: {e}); "
                        f"install the Debian package dataset-fashion-mnist or pass --data-dir") from None
    return Path(root)


def load(cfg: DataConfig) -> FashionMNIST:
    try:
        directory = find_data_dir(cfg.data_dir)
    except DataError:
        if not cfg.download:
            raise
        directory = download()
    arrays = {key: read_idx(_locate(directory, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(f"{directory}: {split} images/labels have the wrong IDX type (3-d images, 1-d labels)")
        if len(x) != len(y):
            raise DataError(f"{directory}: {split} has {len(x)} images but {len(y)} labels")
        if len(x) != EXPECTED_COUNT[split]:
            raise DataError(f"{directory}: {split} has {len(x)} images, expected {EXPECTED_COUNT[split]}")
        if y.max() >= NUM_CLASSES:
            raise DataError(f"{directory}: {split} labels contain {int(y.max())}, expected 0..{NUM_CLASSES - 1}")
    return FashionMNIST(arrays["train_images"], arrays["train_labels"].astype(np.int64),
                        arrays["test_images"], arrays["test_labels"].astype(np.int64), str(directory))


def stratified_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of size n (sorted); all indices when n is None or >= len."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split
    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(idx)


def fingerprint(*arrays: np.ndarray) -> str:
    """A short content hash (sha256, 16 hex digits) of arrays, including shapes and dtypes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    """`python -m distributed.data [--download]`: check (or fetch) the dataset; used by the Makefile."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog="python -m distributed.data", description=main.__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--download", action="store_true", help="fetch with torchvision when no files are found")
    args = parser.parse_args(argv)
    try:
        d = load(DataConfig(data_dir=args.data_dir, download=args.download))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Fashion-MNIST: {len(d.train_x)} training + {len(d.test_x)} test images from {d.source}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
