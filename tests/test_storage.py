"""Object storage for runs (s3://, gs://): URI parsing without any network, and uploads, downloads and
the report's fetch against a real S3 endpoint on loopback (moto's server; no Ray here)."""
import json
from pathlib import Path

import pytest

from distributed import storage
from distributed.config import ConfigError
from distributed.tables import relative_checkpoint


@pytest.mark.parametrize("text, parsed", [
    ("results", None),
    ("/mnt/shared/results", None),
    ("s3://bucket/runs", ("s3", "bucket", "runs")),
    ("s3://bucket", ("s3", "bucket", "")),
    ("s3://bucket/", ("s3", "bucket", "")),
    ("S3://bucket/a//b/", ("s3", "bucket", "a/b")),
    ("gs://my-bucket/team/runs", ("gs", "my-bucket", "team/runs")),
    ("gcs://my-bucket/runs", ("gcs", "my-bucket", "runs")),
])
def test_parse_storage_uri(text, parsed):
    store = storage.parse_storage_uri(text)
    assert (None if store is None else (store.scheme, store.bucket, store.prefix)) == parsed


@pytest.mark.parametrize("text, message", [
    ("ftp://host/runs", "--storage-path ftp://host/runs: unsupported scheme 'ftp://'"),
    ("file:///tmp/runs", "unsupported scheme 'file://'"),
    ("s3://", "--storage-path s3://: no bucket; write s3://BUCKET/PREFIX"),
    ("gs:///runs", "no bucket; write gs://BUCKET/PREFIX"),
    ("s3://bucket/runs?region=eu-west-1", "no query options in the URI"),
    ("s3://bucket/a/../b", "'.' and '..' are not allowed"),
])
def test_parse_storage_uri_refuses(text, message):
    with pytest.raises(ConfigError) as e:
        storage.parse_storage_uri(text)
    assert message in str(e.value)


def test_store_names_the_same_place_as_uri_and_as_filesystem_path():
    store = storage.parse_storage_uri("s3://bucket/team/runs/")
    assert store.uri == "s3://bucket/team/runs"
    assert store.run_uri("quick", "folds", "t1") == "s3://bucket/team/runs/quick/folds/t1"
    assert store.fs_path("quick", "summary.json") == "bucket/team/runs/quick/summary.json"
    assert storage.parse_storage_uri("gs://b").fs_path("x") == "b/x"


def test_run_location_of_a_bucket_and_of_a_directory(tmp_path, monkeypatch):
    where = storage.RunLocation.of("s3://bucket/runs/", "full")
    assert where.local_dir == Path("results/full") and str(where) == "results/full"  # the driver's working copy
    assert (where.parent, where.root) == ("s3://bucket/runs", "s3://bucket/runs/full")
    assert where.remote_root == "bucket/runs/full" and where.store == storage.RemoteStore("s3", "bucket", "runs")

    monkeypatch.chdir(tmp_path)
    where = storage.RunLocation.of("runs", "q")
    assert where.store is None and where.remote_root is None
    assert where.local_dir == Path("runs/q") and Path(where) == Path("runs/q")  # as given: messages stay short
    assert (where.parent, where.root) == (str(tmp_path / "runs"), str(tmp_path / "runs" / "q"))
    assert where.resolved().local_dir == tmp_path / "runs" / "q"
    assert where.upload() == [] and where.download("tune") == 0  # a local run: nothing to copy
    assert storage.RunLocation.of("/mnt/shared/results", "full").local_dir == Path("/mnt/shared/results/full")
    with pytest.raises(ConfigError, match="unsupported scheme 'ftp://'"):
        storage.RunLocation.of("ftp://host/runs", "q")


def test_relative_checkpoint_is_the_same_for_local_and_bucket_runs(tmp_path):
    local = tmp_path / "runs" / "q"
    ckpt = local / "folds" / "t1" / "epoch_003"
    assert relative_checkpoint(str(ckpt), local) == "folds/t1/epoch_003"
    # Ray names a checkpoint in a bucket by its filesystem path (bucket/prefix/...), sometimes as a URI
    remote_root = "bucket/team/runs/q"
    assert relative_checkpoint("bucket/team/runs/q/folds/t1/epoch_003", local, remote_root) == "folds/t1/epoch_003"
    assert relative_checkpoint("s3://bucket/team/runs/q/folds/t1/epoch_003", local, remote_root) == "folds/t1/epoch_003"


# ---------------------------------------------------------------- against a real S3 endpoint

def _driver_files(d: Path) -> dict[str, bytes]:
    d.mkdir(parents=True, exist_ok=True)
    contents = {"config.json": json.dumps({"name": "q", "storage_path": "s3://unit/runs"}).encode(),
                "summary.json": b'{"n_trials": 2}\n', "trials.parquet": bytes(range(256)) * 40,
                "optuna.db": b"SQLite format 3\x00" + bytes(5000)}
    for name, data in contents.items():
        (d / name).write_bytes(data)
    return contents


def test_upload_then_download_round_trip(s3_server, tmp_path):
    s3_server.make_bucket("unit")
    store = storage.parse_storage_uri("s3://unit/runs")
    assert not storage.remote_run_exists(store, "q")
    contents = _driver_files(tmp_path / "local" / "q")
    copied = storage.upload(tmp_path / "local" / "q", store, "q")
    assert copied == ["config.json", "summary.json", "trials.parquet", "optuna.db"]  # epochs.parquet: none here
    assert s3_server.objects("unit/runs/q") == {f"unit/runs/q/{n}": len(b) for n, b in contents.items()}
    assert storage.remote_run_exists(store, "q")
    assert storage.path_exists("s3://unit/runs/q/optuna.db") and not storage.path_exists("s3://unit/runs/q/nope")

    fresh = tmp_path / "elsewhere" / "q"
    assert storage.download_driver_files(store, "q", fresh) == 4
    assert {p.name: p.read_bytes() for p in fresh.iterdir()} == contents


def test_download_copies_a_directory_tree(s3_server, tmp_path):
    s3_server.make_bucket("tree")
    fs = s3_server.filesystem()
    files = {"folds/t1/epoch_002/fold_0.pt": b"a" * 10, "folds/t1/epoch_002/fold_1.pt": b"b" * 20,
             "folds/t1/epoch_002/oof_fold_0.npz": b"c" * 30, "folds/t2/epoch_001/fold_0.pt": b"d"}
    for key, data in files.items():
        with fs.open_output_stream(f"tree/runs/q/{key}") as f:
            f.write(data)
    store = storage.parse_storage_uri("s3://tree/runs")
    assert storage.download(store, "q", tmp_path, "folds", "t1") == 3
    got = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert got == {k: v for k, v in files.items() if k.startswith("folds/t1/")}
    assert storage.download(store, "q", tmp_path, "folds", "missing") == 0


def test_missing_bucket_is_a_config_error(s3_server):
    with pytest.raises(ConfigError) as e:
        storage.remote_run_exists(storage.parse_storage_uri("s3://never-made/runs"), "q")
    assert str(e.value).startswith("s3://never-made/runs: bucket 'never-made' does not exist")


def test_unreachable_endpoint_is_a_config_error(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConfigError) as e:
        storage.remote_run_exists(storage.parse_storage_uri("s3://unit/runs"), "q")
    assert str(e.value).startswith("s3://unit/runs: cannot read s3://unit/runs/q (")
    assert "\n" not in str(e.value)


def test_fetch_run_makes_a_local_copy_and_refuses_another_runs_directory(s3_server, tmp_path, monkeypatch):
    s3_server.make_bucket("fetch")
    store = storage.parse_storage_uri("s3://fetch/runs")
    contents = _driver_files(tmp_path / "src" / "q")
    contents["config.json"] = json.dumps({"name": "q", "storage_path": "s3://fetch/runs"}).encode()
    (tmp_path / "src" / "q" / "config.json").write_bytes(contents["config.json"])
    storage.upload(tmp_path / "src" / "q", store, "q")

    monkeypatch.chdir(tmp_path)
    assert storage.fetch_run(str(tmp_path / "src" / "q")) == tmp_path / "src" / "q"  # a local path: as it is
    local = storage.fetch_run("s3://fetch/runs/q")
    assert local == Path("results/q")
    assert {p.name: p.read_bytes() for p in local.iterdir()} == contents
    assert storage.fetch_run("s3://fetch/runs/q") == local  # its own working copy: refreshed, not refused

    other = json.dumps({"name": "q", "storage_path": "results"}).encode()
    (local / "config.json").write_bytes(other)  # now results/q is a local run of the same name
    with pytest.raises(ConfigError, match="belongs to another run"):
        storage.fetch_run("s3://fetch/runs/q")
    assert (local / "config.json").read_bytes() == other  # untouched
    with pytest.raises(ConfigError, match="no such run in the bucket"):
        storage.fetch_run("s3://fetch/runs/nope")
    with pytest.raises(ConfigError, match="name a run"):
        storage.fetch_run("s3://fetch")


def test_fetch_checkpoint_only_for_bucket_runs_and_only_when_missing(s3_server, tmp_path):
    s3_server.make_bucket("ckpt")
    with s3_server.filesystem().open_output_stream("ckpt/runs/q/folds/t1/epoch_003/fold_0.pt") as f:
        f.write(b"weights")
    assert storage.fetch_checkpoint(tmp_path, "results", "q", "folds/t1/epoch_003") == 0  # a local run
    assert storage.fetch_checkpoint(tmp_path, "s3://ckpt/runs", "q", "folds/t1/epoch_003") == 1
    assert (tmp_path / "folds/t1/epoch_003/fold_0.pt").read_bytes() == b"weights"
    assert storage.fetch_checkpoint(tmp_path, "s3://ckpt/runs", "q", "folds/t1/epoch_003") == 0  # already here
