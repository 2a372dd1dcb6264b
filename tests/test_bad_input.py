"""The bad-input catalogue across the three CLIs (tune.py, report.py, clip_zeroshot.py), in one table.

For every entry: exit code 2, exactly one line on stderr that names the bad value, and a pre-existing run
directory left byte-for-byte as it was. tests/test_tune_cli.py covers the engine's flags and data files in
more depth; this test is the cross-CLI contract."""
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (script, args, text the one stderr line must contain); {S} is the storage dir, {RUN} the existing run
CATALOGUE = [
    ("tune", ["--preset", "nope"], "--preset nope"),
    ("tune", ["--folds", "1"], "--folds 1"),
    ("tune", ["--epochs", "-2"], "--epochs -2"),
    ("tune", ["--limit-train", "5"], "--limit-train 5"),
    ("tune", ["--lr", "abc"], "--lr"),
    ("tune", ["--data-dir", "{S}/nodata"], "{S}/nodata"),
    ("tune", ["--data-dir", "{S}/corrupt"], "bad IDX magic number"),
    ("tune", ["--name", "run"], "{RUN} already exists"),
    ("tune", ["--name", "run", "--resume", "--folds", "4"], "cv.folds"),
    ("tune", ["--name", "ghost", "--resume"],
     "--resume --name ghost: there is no such run in {S}; the runs there are: run"),
    ("tune", ["--storage-path", "/proc/x"], "--storage-path /proc/x: cannot create it: No such file or directory"),
    ("tune", ["--storage-path", "ftp://host/runs"], "ftp://host/runs: unsupported scheme"),
    ("tune", ["--storage-path", "s3://"], "s3://: no bucket"),
    ("tune", ["--storage-path", "s3://bucket/runs?region=eu-west-1"], "s3://bucket/runs?region=eu-west-1: no query"),
    ("tune", ["--storage-path", "s3://no-such-bucket/runs"], "bucket 'no-such-bucket' does not exist"),
    ("report", ["s3://no-such-bucket/runs/x"], "bucket 'no-such-bucket' does not exist"),
    ("report", ["{S}/missing"], "{S}/missing"),
    ("report", ["{S}"], "not a run directory"),
    ("report", ["{RUN}"], "{RUN}/summary.json"),
    ("clip_zeroshot", ["--limit", "0", "--model", "tiny-test-vit"], "--limit 0"),
    ("clip_zeroshot", ["--model", "ViT-Nope-99"], "ViT-Nope-99"),
    ("clip_zeroshot", ["--model", "tiny-test-vit", "--pretrained", "{S}/no-such-weights.pt"], "no-such-weights.pt"),
    ("clip_zeroshot", ["--model", "tiny-test-vit", "--split", "val"], "--split"),
    ("clip_zeroshot", ["--model", "tiny-test-vit", "--run-dir", "{S}/missing"], "{S}/missing"),
]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    s = tmp_path_factory.mktemp("bad")
    run = s / "run"  # an existing run directory (its files need not be valid: they must stay untouched)
    run.mkdir()
    (run / "config.json").write_text('{"name": "run", "preset": "smoke", "cv": {"folds": 3}}\n')
    (run / "summary.json").write_text('{"n_trials": 3}\n')
    (run / "trials.parquet").write_bytes(b"PAR1 not really")
    (s / "nodata").mkdir()
    corrupt = s / "corrupt"
    corrupt.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (corrupt / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x07\x07" + bytes(64)))
    return s


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script, args, expected", CATALOGUE,
                         ids=[f"{c[0]}:{' '.join(c[1])}" for c in CATALOGUE])
def test_bad_input(storage, s3_server, script, args, expected):
    run = storage / "run"
    fill = lambda text: text.replace("{S}", str(storage)).replace("{RUN}", str(run))
    argv = [fill(a) for a in args]
    if script == "tune":
        argv = ["--preset", "smoke", "--storage-path", str(storage), *argv]
    before = snapshot(storage)
    # s3:// URIs go to the local S3 server (an empty one: no bucket exists), never to the internet
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{script}.py"), *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, **s3_server.env})
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-2000:]
    assert fill(expected) in lines[0]
    assert snapshot(storage) == before  # nothing written, nothing damaged


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another user")
def test_a_storage_path_that_cannot_be_written_exits_2_before_any_work(tmp_path):
    """Run as nobody (root writes everywhere): a read-only --storage-path, one below it, and one inside a folder
    nobody may enter (pytest's own tmp_path) are refused in one line before Ray starts or the data loads."""
    import tempfile
    ro = Path(tempfile.mkdtemp(prefix="ro-", dir="/tmp"))  # /tmp: a folder nobody can reach
    ro.chmod(0o555)
    closed = tmp_path / "runs"
    for storage, words in ((ro, f"--storage-path {ro}: cannot make the run directory there ({ro} is not "
                                f"writable by this user)"),
                           (ro / "a" / "b", f"--storage-path {ro / 'a' / 'b'}: cannot make the run directory"),
                           (closed, f"--storage-path {closed}: not accessible by this user (Permission denied")):
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                              "experiments/tune.py", "--preset", "smoke", "--storage-path", str(storage), "--name", "x"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines
        assert list(ro.iterdir()) == []
    ro.rmdir()
    # a run directory of its own that this user cannot write: a --resume of it is refused the same way
    parent = Path(tempfile.mkdtemp(prefix="runs-", dir="/tmp"))
    parent.chmod(0o755)
    (parent / "r").mkdir()
    (parent / "r" / "config.json").write_text("{}")
    (parent / "r").chmod(0o555)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                          "experiments/tune.py", "--preset", "smoke", "--storage-path", str(parent), "--name", "r",
                          "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == f"tune.py: error: run directory {parent / 'r'} is not writable by this user"
    assert sorted(p.name for p in (parent / "r").iterdir()) == ["config.json"]
    shutil.rmtree(parent)
