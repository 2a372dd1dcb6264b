"""experiments/predict.py end to end on a real model directory (deploy.bundle.write_bundle: ONNX + TorchScript)
and real Fashion-MNIST test images: its classes and probabilities equal the torch module's on the arrays, for
every kind of input and both backends; every bad input is refused in one stderr line with exit code 2."""
import csv
import gzip
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_script
from deploy import bundle, runtime
from distributed.config import CLASS_NAMES

N = 20
predict = load_script("predict")


def decisive_model(calibration: np.ndarray):
    """A random small CNN made to give varied, well-separated classes, so that matching argmaxes mean
    something: batch-norm statistics from real images, and a classifier sharpened tenfold (no training)."""
    import torch
    from distributed.config import ModelConfig
    from distributed.model import make_model
    model = make_model(ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(calibration.copy()).unsqueeze(1).float().div(127.5).sub(1.0))
        model.classifier.weight.mul_(10)
    return model.eval()


def probabilities(module, images: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return module(torch.from_numpy(images.copy())).numpy()


@pytest.fixture(scope="session")
def model(fmnist, tmp_path_factory):
    """A model directory holding "ensemble" (2 models, flip TTA) and "single", and the reference probabilities
    of the torch modules on the first N test images."""
    import torch
    from deploy.ensemble import build
    torch.manual_seed(0)
    calibration = fmnist.train_x[:500]
    ensemble = build([decisive_model(calibration) for _ in range(2)], tta_flip=True)
    single = build([decisive_model(calibration)], tta_flip=False)
    path = bundle.write_bundle(tmp_path_factory.mktemp("export") / "model", {"ensemble": ensemble, "single": single},
                               {"classes": list(CLASS_NAMES), "default_model": "ensemble"})
    x = fmnist.test_x[:N]
    return SimpleNamespace(dir=path, x=x, ensemble=ensemble, probs=probabilities(ensemble, x),
                           single_probs=probabilities(single, x))


@pytest.fixture(scope="session")
def pngs(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs")
    for i, image in enumerate(model.x):
        Image.fromarray(image).save(d / f"img{i:02d}.png")
    return d


def run(argv, capsys):
    try:
        code = predict.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def assert_matches(records: list[dict], probs: np.ndarray, k: int) -> None:
    """jsonl records agree with reference probabilities: the same top-k classes, probabilities within 1e-5."""
    assert len(records) == len(probs)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    for rec, row, p in zip(records, best, probs):
        assert [t["index"] for t in rec["top"]] == row.tolist()
        assert [t["class"] for t in rec["top"]] == [CLASS_NAMES[i] for i in row]
        np.testing.assert_allclose([t["probability"] for t in rec["top"]], p[row], atol=1e-5, rtol=0)


def test_the_reference_model_is_decisive(model):
    # Otherwise the matching classes below would prove little: several classes, and clear winners.
    assert len(set(model.probs.argmax(1))) >= 4
    top2 = np.sort(model.probs, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4


def test_png_files_match_the_torch_module(model, pngs, capsys):
    files = sorted(pngs.iterdir())
    code, out, err = run([model.dir, *files, "--format", "jsonl", "--top", "3"], capsys)
    assert code == 0
    records = jsonl(out)
    assert [r["input"] for r in records] == [str(f) for f in files]
    assert_matches(records, model.probs, k=3)
    assert err.splitlines() == [f"device: CPU (onnxruntime CPUExecutionProvider); model 'ensemble' from "
                                f"{model.dir}; {N} images"]


def test_a_directory_is_read_sorted_and_counted(model, pngs, capsys):
    code, out, err = run([model.dir, pngs, "--format", "csv", "--top", "3"], capsys)
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["input", "rank", "class", "index", "probability"]
    assert len(table) == 3 * N
    assert [r["input"] for r in table[::3]] == [str(pngs / f"img{i:02d}.png") for i in range(N)]
    assert [int(r["rank"]) for r in table] == [1, 2, 3] * N
    best = np.argsort(-model.probs, axis=1, kind="stable")[:, :3]
    assert [int(r["index"]) for r in table] == best.ravel().tolist()
    assert [r["class"] for r in table] == [CLASS_NAMES[i] for i in best.ravel()]
    np.testing.assert_allclose([float(r["probability"]) for r in table],
                               np.take_along_axis(model.probs, best, 1).ravel(), atol=1e-5, rtol=0)
    assert err.splitlines()[0] == f"{pngs}: {N} images found"


def test_npy_and_idx_inputs(model, tmp_path, capsys):
    np.save(tmp_path / "batch.npy", model.x)
    np.save(tmp_path / "one.npy", model.x[7])
    idx = tmp_path / "t-images-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, N, 28, 28) + model.x.tobytes()))
    code, out, _ = run([model.dir, tmp_path / "batch.npy", tmp_path / "one.npy", idx, "--format", "jsonl"], capsys)
    assert code == 0
    records = jsonl(out)
    assert [r["input"] for r in records] == ([f"{tmp_path}/batch.npy[{i}]" for i in range(N)] +
                                             [f"{tmp_path}/one.npy"] + [f"{idx}[{i}]" for i in range(N)])
    assert_matches(records, np.concatenate([model.probs, model.probs[7:8], model.probs]), k=1)


def test_torchscript_gives_the_same_classes(model, pngs, capsys):
    files = sorted(pngs.iterdir())
    _, onnx_out, _ = run([model.dir, *files, "--format", "jsonl", "--top", "10"], capsys)
    code, out, err = run([model.dir, *files, "--format", "jsonl", "--top", "10", "--backend", "torchscript"], capsys)
    assert code == 0
    assert [[t["index"] for t in r["top"]] for r in jsonl(out)] == \
        [[t["index"] for t in r["top"]] for r in jsonl(onnx_out)]
    assert_matches(jsonl(out), model.probs, k=10)
    assert "CPU (torchscript)" in err.splitlines()[-1]


def parse_table(out: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]  # cells: 2+ spaces apart


def test_table_with_top_k(model, pngs, capsys):
    code, out, _ = run([model.dir, pngs, "--top", "3"], capsys)
    assert code == 0
    header, *rows = parse_table(out)
    assert header == ["input", "top 1", "top 2", "top 3"] and len(rows) == N
    best = np.argsort(-model.probs, axis=1, kind="stable")[:, :3]
    for row, b, p in zip(rows, best, model.probs):
        assert row[1:] == [f"{CLASS_NAMES[i]} ({p[i]:.4f})" for i in b]


def test_subprocess_table_and_no_torch_import(model, pngs):
    """The real command line: the default table, and onnxruntime without torch (python -X importtime)."""
    files = sorted(pngs.iterdir())[:5]
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "experiments" / "predict.py"),
                           str(model.dir), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imports = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "onnxruntime" in imports and "PIL.Image" in imports  # the parse sees the imports...
    assert not [m for m in imports if m == "torch" or m.startswith("torch.")]  # ...and torch is not one
    messages = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert len(messages) == 1 and messages[0].startswith("device: CPU (onnxruntime")
    header, *rows = parse_table(proc.stdout)
    assert header == ["input", "class", "probability"]
    assert rows == [[str(f), CLASS_NAMES[p.argmax()], f"{p.max():.4f}"] for f, p in zip(files, model.probs)]


@pytest.mark.parametrize("default, flag, expected", [
    ("ensemble", ["--model", "single"], "single"),
    ("single", [], "single"),
    (None, [], "ensemble"),  # no default_model in model.json: "ensemble"
])
def test_model_choice(model, pngs, tmp_path, capsys, default, flag, expected):
    copy = tmp_path / "model"
    shutil.copytree(model.dir, copy)
    meta = json.loads((copy / "model.json").read_text())  # model.json itself carries no checksum
    meta.pop("default_model")
    if default:
        meta["default_model"] = default
    (copy / "model.json").write_text(json.dumps(meta))
    code, out, err = run([copy, pngs, "--format", "jsonl", *flag], capsys)
    assert code == 0 and f"model '{expected}'" in err
    assert_matches(jsonl(out), model.single_probs if expected == "single" else model.probs, k=1)


def test_out_file(model, pngs, tmp_path, capsys):
    code, out, _ = run([model.dir, pngs, "--format", "csv", "--out", tmp_path / "p.csv"], capsys)
    assert code == 0 and out == ""
    table = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert [int(r["index"]) for r in table] == model.probs.argmax(1).tolist()


def test_progress_lines(model, fmnist):
    m = runtime.open_model(model.dir)
    stream = io.StringIO()
    m.predict(fmnist.test_x[:600], batch_size=256, progress=predict.Progress("classifying", "images", stream, every=0))
    assert stream.getvalue().splitlines() == ["classifying: 256/600 images", "classifying: 512/600 images",
                                              "classifying: 600/600 images"]
    quiet = io.StringIO()  # work shorter than the interval says nothing
    m.predict(fmnist.test_x[:600], progress=predict.Progress("classifying", "images", quiet, every=3600))
    assert quiet.getvalue() == ""


# ---- bad input: exit code 2, one line on stderr, nothing on stdout, nothing written

def rehash(model_dir: Path, name: str) -> None:
    """Put a replaced file's checksum into model.json, as someone mixing two exports would."""
    meta = json.loads((model_dir / "model.json").read_text())
    f = model_dir / name
    meta["files"][name] = {"sha256": bundle.sha256(f), "bytes": f.stat().st_size}
    (model_dir / "model.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def bad(model, pngs, tmp_path_factory):
    import onnx
    d = tmp_path_factory.mktemp("bad")
    (d / "no-json").mkdir()
    for name in ("incomplete", "tampered", "foreign-onnx", "foreign-ts"):
        shutil.copytree(model.dir, d / name)
    (d / "incomplete" / "ensemble.onnx").unlink()
    with open(d / "tampered" / "ensemble.onnx", "ab") as f:
        f.write(b"\0")
    proto = onnx.load(str(d / "foreign-onnx" / "ensemble.onnx"))
    next(p for p in proto.metadata_props if p.key == "export_id").value = "another-export"
    onnx.save(proto, str(d / "foreign-onnx" / "ensemble.onnx"))
    rehash(d / "foreign-onnx", "ensemble.onnx")
    ts = d / "foreign-ts" / "ensemble.torchscript.pt"
    bundle.save_torchscript(bundle.load_torchscript(ts)[0], ts, "another-export")
    rehash(d / "foreign-ts", "ensemble.torchscript.pt")

    (d / "empty").mkdir()
    (d / "empty" / "readme.txt").write_text("no images here")
    (d / "junk.png").write_bytes(b"this is not a PNG")
    png = (pngs / "img00.png").read_bytes()
    (d / "truncated.png").write_bytes(png[:len(png) // 2])
    np.save(d / "shape.npy", np.zeros((3, 32, 32), np.uint8))
    np.save(d / "dtype.npy", np.zeros((4, 28, 28), np.float32))
    (d / "t-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x801, 3) + bytes(3)))
    (d / "x-images-idx3-ubyte").write_bytes(b"\x00\x00\x07\x07" + bytes(64))
    return d


GOOD = "{PNGS}/img00.png"
CATALOGUE = [  # (arguments, words the one stderr line must contain); {M} the model, {B} the bad-input dir
    (["{B}/nope", GOOD], "{B}/nope: not a directory"),
    (["{B}/no-json", GOOD], "no model.json"),
    (["{B}/incomplete", GOOD], "ensemble.onnx is missing"),
    (["{B}/tampered", GOOD], "{B}/tampered/ensemble.onnx: its checksum differs"),
    (["{B}/foreign-onnx", GOOD], "ensemble.onnx: comes from another export (export_id another-export"),
    (["{B}/foreign-ts", GOOD, "--backend", "torchscript"], "ensemble.torchscript.pt: comes from another export"),
    (["{M}", GOOD, "--model", "nope"], "no model 'nope' (it has: ensemble, single)"),
    (["{M}", "{B}/missing.png"], "{B}/missing.png: no such file or directory"),
    (["{M}", "{B}/empty"], "{B}/empty: no PNG or JPEG images"),
    (["{M}", "{PNGS}", "{B}/junk.png"], "{B}/junk.png: cannot decode it as an image"),
    (["{M}", "{B}/truncated.png"], "{B}/truncated.png: cannot decode this image (image file is truncated"),
    (["{M}", "{B}/shape.npy"], "shape (3, 32, 32) and dtype uint8; expected dtype uint8 (0-255) and shape (N, 28, 28)"),
    (["{M}", "{B}/dtype.npy"], "shape (4, 28, 28) and dtype float32; expected dtype uint8"),
    (["{M}", "{B}/t-labels-idx1-ubyte.gz"], "t-labels-idx1-ubyte.gz: an IDX file of labels"),
    (["{M}", "{B}/x-images-idx3-ubyte"], "bad IDX magic number"),
    (["{M}", GOOD, "--top", "0"], "argument --top: expected an integer from 1 to 10, got '0'"),
    (["{M}", GOOD, "--top", "11"], "got '11'"),
    (["{M}", GOOD, "--out", "{B}"], "--out {B}: is a directory"),
    (["{M}", GOOD, "--out", "{B}/no/such/p.csv"], "directory {B}/no/such does not exist"),
]


@pytest.mark.parametrize("argv, words", CATALOGUE, ids=[c[1][:40] for c in CATALOGUE])
def test_bad_input(model, pngs, bad, capfd, argv, words):
    def fill(s):
        return s.format(M=model.dir, B=bad, PNGS=pngs)
    try:
        code = predict.main([fill(a) for a in argv] + ["--format", "csv"])
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()  # the file descriptors: onnxruntime's own logging would show here too
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and fill(words) in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input(model, tmp_path, capfd):
    f = tmp_path / "secret.png"
    f.write_bytes(b"")
    f.chmod(0)
    with pytest.raises(SystemExit) as e:
        predict.main([str(model.dir), str(f)])
    out, err = capfd.readouterr()
    assert e.value.code == 2 and out == "" and err == f"predict.py: error: {f}: not readable (permission denied)\n"


def test_bad_input_in_a_subprocess(model, bad):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "predict.py"), str(bad / "tampered"),
                           str(bad / "junk.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"predict.py: error: {bad}/tampered/ensemble.onnx: its checksum differs "
                                        f"from model.json's (modified or from another export): export again"]


# ---- messages pinned verbatim: exit code 2, exactly one stderr line, nothing on stdout, --out not written

UNDECODABLE = ("cannot decode it as an image (not a format Pillow reads; expected PNG or JPEG, a .npy array or a "
               "*-images-idx3-ubyte[.gz] file)")


@pytest.fixture(scope="module")
def messy(pngs, tmp_path_factory):
    """Empty files, a folder of one good and three bad images, a folder of six bad ones, and run directories."""
    d = tmp_path_factory.mktemp("messy")
    (d / "three").mkdir()
    for name in ("empty.png", "empty.npy", "three/a.png", "three/c.jpg"):
        (d / name).write_bytes(b"")
    shutil.copy(pngs / "img00.png", d / "three" / "good.png")
    (d / "three" / "b.png").write_bytes(b"this is not a PNG")
    (d / "six").mkdir()
    for i in range(6):
        (d / "six" / f"bad{i}.png").write_bytes(b"" if i % 2 else b"junk")
    (d / "run" / "folds").mkdir(parents=True)  # as experiments/tune.py leaves it before export: summary.json, folds/
    (d / "run" / "summary.json").write_text("{}")
    shutil.copytree(d / "run", d / "my run")
    shutil.copytree(d / "run", d / "exported")
    (d / "exported" / "model").mkdir()
    (d / "exported" / "model" / "model.json").write_text("{}")
    return d


MESSAGES = [  # (arguments, the whole stderr line); {D} the messy directory, {M} the model
    (["{M}", "{D}/empty.png"], "{D}/empty.png: empty file (0 bytes)"),
    (["{M}", "{D}/empty.npy"], "{D}/empty.npy: empty file (0 bytes)"),
    (["{M}", "{D}/three"],
     "3 of 4 input files cannot be used (fix or remove them): {D}/three/a.png: empty file (0 bytes); "
     "{D}/three/b.png: " + UNDECODABLE + "; {D}/three/c.jpg: empty file (0 bytes)"),
    (["{M}", "{D}/six"],
     "6 of 6 input files cannot be used (fix or remove them): {D}/six/bad0.png: " + UNDECODABLE + "; "
     "{D}/six/bad1.png: empty file (0 bytes); {D}/six/bad2.png: " + UNDECODABLE + "; and 3 more"),
    (["{M}", "{D}/empty.png", "{D}/three/good.png", "{D}/empty.npy"],
     "2 of 3 input files cannot be used (fix or remove them): {D}/empty.png: empty file (0 bytes); "
     "{D}/empty.npy: empty file (0 bytes)"),
    (["{D}/run", "{D}/three/good.png"],
     "{D}/run: a run directory, not a model directory; export its model first with python experiments/export.py "
     "{D}/run (it writes {D}/run/model), then pass {D}/run/model"),
    (["{D}/my run", "{D}/three/good.png"],
     "{D}/my run: a run directory, not a model directory; export its model first with python "
     "experiments/export.py '{D}/my run' (it writes {D}/my run/model), then pass '{D}/my run/model'"),
    (["{D}/exported", "{D}/three/good.png"],
     "{D}/exported: a run directory, not a model directory; its exported model is in {D}/exported/model: "
     "pass that"),
]


@pytest.mark.parametrize("argv, line", MESSAGES, ids=[c[1][4:44] for c in MESSAGES])
def test_message_verbatim(model, messy, tmp_path, capfd, argv, line):
    fill = lambda s: s.format(M=model.dir, D=messy)  # noqa: E731
    before = sorted(p.relative_to(messy) for p in messy.rglob("*"))
    out_file = tmp_path / "preds.csv"
    with pytest.raises(SystemExit) as e:
        predict.main([fill(a) for a in argv] + ["--out", str(out_file)])
    out, err = capfd.readouterr()
    assert e.value.code == 2 and out == ""
    assert err.splitlines() == [f"predict.py: error: {fill(line)}"]
    assert not out_file.exists() and list(tmp_path.iterdir()) == []
    assert sorted(p.relative_to(messy) for p in messy.rglob("*")) == before  # no model/ made in a run directory


def test_export_command_in_the_message_is_the_real_one(messy, tmp_path):
    """The message's command is export.py's CLI: it reads the (fake) run and refuses it in its own words."""
    run_dir = tmp_path / "run"
    shutil.copytree(messy / "run", run_dir)
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "predict.py"), str(run_dir), "x.png"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    command = re.search(r"with (python experiments/export\.py \S+) \(", proc.stderr).group(1)
    assert command == f"python experiments/export.py {run_dir}"
    export = subprocess.run([sys.executable, *command.split()[1:]], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    lines = export.stderr.splitlines()
    assert export.returncode == 2 and len(lines) == 1, export.stderr[-2000:]
    assert lines[0].startswith(f"export.py: error: {run_dir}") and "usage" not in lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == ["folds", "summary.json"]
