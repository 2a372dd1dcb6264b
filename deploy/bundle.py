"""The model directory (results/NAME/model/): how it is written and how it is checked before use.

    model.json                  what is inside: classes, input/output, each model's files and figures,
                                the sha256 of every file, and an export_id
    <name>.onnx                 each model in ONNX (input "images" uint8 (N, 28, 28), output "probs" (N, 10))
    <name>.torchscript.pt       the same model in TorchScript
    MODEL_CARD.md               for people

<name> is "ensemble" (the K fold models) and, after `export.py --refit`, "single". The export_id is also
stored inside every model file (ONNX metadata, a TorchScript extra file), so a file copied in from another
export is refused even when its checksum was edited into model.json.

This module imports no torch at import time: predict.py checks a directory with it and runs onnxruntime.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from distributed.files import _json_default  # numpy numbers in the figures

FORMAT = "fashion-mnist-tune/model"
FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "images", "probs"
EXPORT_ID_KEY = "export_id"  # ONNX metadata_props key and TorchScript extra-file name


class BundleError(Exception):
    """A model directory that is missing, incomplete, tampered with or mixed from two exports (one line)."""


def onnx_file(name: str) -> str:
    return f"{name}.onnx"


def torchscript_file(name: str) -> str:
    return f"{name}.torchscript.pt"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_export_id() -> str:
    return uuid.uuid4().hex


# ---- writing (torch, onnx)

# torch 2.14 marks torch.jit deprecated (FutureWarning) in favour of torch.export; TorchScript is still the
# format that loads in plain libtorch (C++) with no Python, which is why the issue asks for it.
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


def save_torchscript(module, path: Path, export_id: str) -> None:
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _JIT_DEPRECATION, FutureWarning)
        torch.jit.save(torch.jit.script(module), str(path), _extra_files={EXPORT_ID_KEY: export_id})


def load_torchscript(path: Path, device: str = "cpu"):
    """(module, the export_id stored in it)."""
    import warnings

    import torch
    extra = {EXPORT_ID_KEY: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _JIT_DEPRECATION, FutureWarning)
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    found = extra[EXPORT_ID_KEY]
    return module.eval(), found.decode() if isinstance(found, bytes) else found


def save_onnx(module, path: Path, export_id: str) -> None:
    """ONNX through torch.export (the dynamo exporter), a dynamic batch dimension, the export_id as metadata."""
    import contextlib
    import io

    import onnx
    import torch
    sample = torch.zeros(2, 28, 28, dtype=torch.uint8)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(module, (sample,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("N")},), dynamo=True,
                                    external_data=False, verbose=False)
    proto = program.model_proto
    proto.metadata_props.add(key=EXPORT_ID_KEY, value=export_id)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


class Staging:
    """A model directory being written: files go to a hidden sibling directory, which becomes `out` only in
    finish(). Leaving the `with` block by an exception (a failed parity check, a crash) removes it, and an
    existing `out` stays as it was.

        with Staging(out) as stage:
            stage.save_model("ensemble", module)        # TorchScript + ONNX, the export_id inside both
            ...check stage.path("ensemble.onnx")...
            stage.finish(meta, {"MODEL_CARD.md": text})  # model.json with every file's sha256; rename
    """

    def __init__(self, out, export_id: str | None = None):
        self.out = Path(out)
        self.export_id = export_id or new_export_id()
        self.dir: Path | None = None
        self.models: dict[str, dict] = {}

    def __enter__(self) -> "Staging":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-"))
        return self

    def __exit__(self, *exc) -> None:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def save_model(self, name: str, module) -> dict:
        """Both formats of one model; returns its model.json entry (file names)."""
        save_torchscript(module, self.path(torchscript_file(name)), self.export_id)
        save_onnx(module, self.path(onnx_file(name)), self.export_id)
        self.models[name] = {"onnx": onnx_file(name), "torchscript": torchscript_file(name)}
        return self.models[name]

    def finish(self, meta: dict, extra_files: dict[str, bytes] | None = None) -> Path:
        for fname, data in (extra_files or {}).items():
            self.path(fname).write_bytes(data)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, EXPORT_ID_KEY: self.export_id, **meta}
        models = meta.setdefault("models", {})
        for name, files in self.models.items():
            models[name] = {**files, **models.get(name, {})}
        meta["files"] = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
                         for p in sorted(self.dir.iterdir())}
        self.path("model.json").write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
        os.chmod(self.dir, 0o755)  # mkdtemp makes 0700
        replace_dir(self.dir, self.out)
        return self.out


def write_bundle(out, modules: dict, meta: dict, extra_files: dict[str, bytes] | None = None) -> Path:
    """A model directory in one go: modules is name -> torch module (uint8 (N, 28, 28) -> probs (N, 10)),
    meta the rest of model.json, extra_files more files to include (written as given)."""
    with Staging(out) as stage:
        for name, module in modules.items():
            stage.save_model(name, module)
        return stage.finish(dict(meta), extra_files)


def replace_dir(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` moves aside first and is deleted after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rmdir(old)
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- checking (no torch)

def read_meta(model_dir: Path) -> dict:
    """model.json of a model directory, its format checked, and every file it lists checked by size and sha256."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BundleError(f"{model_dir}: not a directory (expected a model directory written by "
                          f"experiments/export.py)")
    path = model_dir / "model.json"
    if not path.is_file():
        raise BundleError(f"{model_dir}: no model.json; not a model directory written by experiments/export.py")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path}: not a model.json of experiments/export.py (format is not '{FORMAT}')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format version {meta.get('format_version')}, this code reads "
                          f"{FORMAT_VERSION}: export the run again")
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: lists no files")
    for name, info in files.items():
        f = model_dir / name
        if not f.is_file():
            raise BundleError(f"{model_dir}: {name} is missing (the directory is incomplete): export again")
        if f.stat().st_size != info.get("bytes") or sha256(f) != info.get("sha256"):
            raise BundleError(f"{f}: its checksum differs from model.json's (modified or from another "
                              f"export): export again")
    for name, entry in meta.get("models", {}).items():
        for key in ("onnx", "torchscript"):
            if entry.get(key) not in files:
                raise BundleError(f"{path}: model '{name}' names {key} file {entry.get(key)!r}, "
                                  f"which model.json does not list")
    return meta


def check_embedded_id(path: Path, found: str | None, meta: dict) -> None:
    if found != meta[EXPORT_ID_KEY]:
        raise BundleError(f"{path}: comes from another export (export_id {found}, model.json says "
                          f"{meta[EXPORT_ID_KEY]}): export again")
