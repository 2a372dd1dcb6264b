"""The IDX reader and dataset discovery: valid files parse, every kind of damage gives DataError naming the file."""
import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed import data as fm
from distributed.config import DataConfig


def idx_images(n, rows=28, cols=28, magic=0x803):
    return struct.pack(">IIII", magic, n, rows, cols) + bytes(range(256)) * (n * rows * cols // 256) + bytes(
        n * rows * cols % 256)


def idx_labels(labels, magic=0x801):
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


def write_set(d, n_train=60_000, n_test=10_000, train_labels=None, gz=True, **overrides):
    files = {
        "train-images-idx3-ubyte": idx_images(n_train),
        "train-labels-idx1-ubyte": idx_labels(train_labels if train_labels is not None else [i % 10 for i in range(n_train)]),
        "t10k-images-idx3-ubyte": idx_images(n_test),
        "t10k-labels-idx1-ubyte": idx_labels([i % 10 for i in range(n_test)]),
    }
    files.update(overrides)
    for stem, raw in files.items():
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (d / stem).write_bytes(raw)


def test_parse_idx_images_and_labels():
    x = fm.parse_idx(idx_images(3))
    assert x.shape == (3, 28, 28) and x.dtype == np.uint8
    assert x.reshape(-1)[:5].tolist() == [0, 1, 2, 3, 4]
    y = fm.parse_idx(idx_labels([9, 0, 3]))
    assert y.tolist() == [9, 0, 3]


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00", "no header"),
    (struct.pack(">I", 0x0803), "truncated IDX header"),
    (struct.pack(">III", 0xDEADBEEF, 1, 1), "bad IDX magic number 0xdeadbeef"),
    (idx_images(2)[:-10], "truncated or padded IDX body (1558 bytes, expected 1568)"),
    (idx_images(2) + b"x", "truncated or padded IDX body (1569 bytes, expected 1568)"),
    (struct.pack(">IIII", 0x803, 1, 32, 32) + bytes(1024), "images are 32x32, expected 28x28"),
])
def test_parse_idx_rejects_damage(raw, message):
    with pytest.raises(fm.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fm.parse_idx(raw, "f")


def test_real_dataset_loads_with_expected_counts(fmnist):
    assert fmnist.train_x.shape == (60_000, 28, 28) and fmnist.test_x.shape == (10_000, 28, 28)
    assert np.bincount(fmnist.train_y).tolist() == [6000] * 10
    assert np.bincount(fmnist.test_y).tolist() == [1000] * 10
    assert fmnist.train_x.dtype == np.uint8 and fmnist.train_x.max() == 255


def test_synthetic_set_loads_gz_and_plain(tmp_path):
    (tmp_path / "gz").mkdir()
    (tmp_path / "plain").mkdir()
    write_set(tmp_path / "gz", gz=True)
    write_set(tmp_path / "plain", gz=False)
    for sub in ("gz", "plain"):
        d = fm.load(DataConfig(data_dir=str(tmp_path / sub)))
        assert d.train_x.shape == (60_000, 28, 28) and d.test_y[:3].tolist() == [0, 1, 2]


def test_labels_out_of_range_rejected(tmp_path):
    labels = [i % 10 for i in range(60_000)]
    labels[5] = 12
    write_set(tmp_path, train_labels=labels)
    with pytest.raises(fm.DataError, match="train labels contain 12, expected 0..9"):
        fm.load(DataConfig(data_dir=str(tmp_path)))


def test_count_mismatch_rejected(tmp_path):
    write_set(tmp_path, **{"t10k-labels-idx1-ubyte": idx_labels([1] * 9_999)})
    with pytest.raises(fm.DataError, match="test has 10000 images but 9999 labels"):
        fm.load(DataConfig(data_dir=str(tmp_path)))


def test_truncated_gzip_rejected(tmp_path):
    write_set(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(fm.DataError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        fm.load(DataConfig(data_dir=str(tmp_path)))


def test_missing_explicit_dir_names_missing_files(tmp_path):
    with pytest.raises(fm.DataError, match=f"--data-dir {tmp_path}: missing Fashion-MNIST files train-images-idx3-ubyte"):
        fm.load(DataConfig(data_dir=str(tmp_path)))


def test_search_order_env_then_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert [str(p) for p in fm.candidate_dirs(None)][:2] == [str(tmp_path), fm.DEBIAN_DIR]
    assert fm.candidate_dirs("/x") == [fm.Path("/x")]  # an explicit dir: no silent fallback


def test_stratified_subset_balanced_and_deterministic(fmnist):
    idx = fm.stratified_subset(fmnist.train_y, 1000, seed=3)
    assert len(idx) == 1000 and len(np.unique(idx)) == 1000
    assert np.bincount(fmnist.train_y[idx]).tolist() == [100] * 10
    assert np.array_equal(idx, fm.stratified_subset(fmnist.train_y, 1000, seed=3))
    assert not np.array_equal(idx, fm.stratified_subset(fmnist.train_y, 1000, seed=4))
    assert len(fm.stratified_subset(fmnist.train_y, None, 0)) == 60_000


def test_fingerprint_sensitive_to_content_and_shape():
    a = np.arange(10, dtype=np.uint8)
    assert fm.fingerprint(a) == fm.fingerprint(a.copy())
    assert fm.fingerprint(a) != fm.fingerprint(a.reshape(2, 5))
    b = a.copy()
    b[3] = 0
    assert fm.fingerprint(a) != fm.fingerprint(b)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_parse_idx_random_bytes(raw):
    try:
        out = fm.parse_idx(raw)
    except fm.DataError:
        return
    assert out.dtype == np.uint8 and out.ndim in (1, 3)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=16 + 2 * 784 + 5), st.sampled_from([0x803, 0x801, 0x802, 0x804]))
def test_fuzz_parse_idx_truncations(cut, magic):
    raw = idx_images(2, magic=magic)
    try:
        out = fm.parse_idx(raw[:cut])
    except fm.DataError:
        return
    assert magic == 0x803 and cut >= len(raw) and out.shape == (2, 28, 28)  # only the whole file parses
