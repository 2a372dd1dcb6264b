"""Classify images with an exported model directory (results/NAME/model, written by experiments/export.py).

    python experiments/predict.py results/full/model photo.jpg
    python experiments/predict.py results/full/model --invert --top 3 shop-photos/
    python experiments/predict.py results/full/model t10k-images-idx3-ubyte.gz --format csv --out preds.csv
    python experiments/predict.py results/full/model batch.npy --backend torchscript --model single

INPUTs: PNG/JPEG files of any size, colour or grey; directories of them; Fashion-MNIST IDX image files
(*-images-idx3-ubyte[.gz]); .npy uint8 arrays (N, 28, 28) or (28, 28). Images become what Fashion-MNIST is
made of (deploy/inputs.py has the rule): grey, trimmed, fitted into 28x28, a light object on a dark
background; --invert for dark-on-light product photos. The table (or CSV, JSON lines) goes to stdout or
--out; the device line, what directories held and progress go to stderr.

Exit codes: 0 done; 2 bad input (one line on stderr, before any image is classified).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy import inputs, runtime  # noqa: E402
from deploy.bundle import BundleError  # noqa: E402
from distributed.cli import ArgumentParser, fail  # noqa: E402
from distributed.config import EXIT_FAILURE, EXIT_OK, NUM_CLASSES  # noqa: E402

FORMATS = ("table", "csv", "jsonl")


def top_arg(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {NUM_CLASSES}, got '{text}'")
    return int(text)


class Progress:
    """'classifying: 2560/10000 images' lines on stderr, every `every` seconds; silent for work shorter than that."""

    def __init__(self, label: str, unit: str, stream=None, every: float = 2.0):
        self.label, self.unit, self.stream, self.every = label, unit, stream or sys.stderr, every
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every or (done == total and self.shown):
            self.stream.write(f"{self.label}: {done}/{total} {self.unit}\n")
            self.stream.flush()
            self.last, self.shown = now, True


def rows(data: inputs.Inputs, probs, classes: list[str], k: int):
    """(input name, [(class, index, probability), ...best first]) per image."""
    idx, p = runtime.top_k(probs, k)
    for name, i_row, p_row in zip(data.names, idx, p):
        yield name, [(classes[i], int(i), float(q)) for i, q in zip(i_row, p_row)]


def write_table(results, k: int, out) -> None:
    if k == 1:
        header = ["input", "class", "probability"]
        cells = [[name, top[0][0], f"{top[0][2]:.4f}"] for name, top in results]
    else:
        header = ["input"] + [f"top {r}" for r in range(1, k + 1)]
        cells = [[name] + [f"{c} ({p:.4f})" for c, _, p in top] for name, top in results]
    widths = [max(len(row[j]) for row in [header] + cells) for j in range(len(header))]
    for row in [header] + cells:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def write_csv(results, out) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["input", "rank", "class", "index", "probability"])
    for name, top in results:
        for rank, (c, i, p) in enumerate(top, 1):
            w.writerow([name, rank, c, i, f"{p:.7g}"])  # float32 carries ~7 significant digits


def write_jsonl(results, out) -> None:
    for name, top in results:
        out.write(json.dumps({"input": name, "top": [{"class": c, "index": i, "probability": float(f"{p:.7g}")}
                                                     for c, i, p in top]}) + "\n")


def check_out(out: str | None) -> None:
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise inputs.InputError(f"--out {out}: is a directory, expected a file name")
    if not path.parent.is_dir():
        raise inputs.InputError(f"--out {out}: directory {path.parent} does not exist")


def check_model_dir(model_dir: str) -> None:
    """A run directory (summary.json, folds/) where a model directory was expected: say how to get its model."""
    path = Path(model_dir)
    if not path.is_dir() or (path / "model.json").exists():
        return
    if not ((path / "summary.json").is_file() or (path / "folds").is_dir()):
        return  # read_meta's own refusal: no model.json
    model = path / "model"
    if (model / "model.json").is_file():
        raise inputs.InputError(f"{path}: a run directory, not a model directory; its exported model is in "
                                f"{shlex.quote(str(model))}: pass that")
    raise inputs.InputError(f"{path}: a run directory, not a model directory; export its model first with "
                            f"python experiments/export.py {shlex.quote(str(path))} (it writes {model}), "
                            f"then pass {shlex.quote(str(model))}")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="predict.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a model directory written by experiments/export.py (results/NAME/model)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="PNG/JPEG files, directories of them, *-images-idx3-ubyte[.gz] files, .npy arrays")
    parser.add_argument("--invert", action="store_true",
                        help="negate the images first: for dark objects on a light background (product photos)")
    parser.add_argument("--top", type=top_arg, default=1, metavar="K",
                        help=f"show the K most probable classes (1-{NUM_CLASSES}; default 1)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (default, for people), csv (input,rank,class,index,probability) or jsonl")
    parser.add_argument("--out", help="write the results to this file instead of stdout")
    parser.add_argument("--backend", choices=runtime.BACKENDS, default="onnxruntime",
                        help="onnxruntime (default: no torch, fast start) or torchscript")
    parser.add_argument("--model", help="which model of model.json to run (e.g. single after export.py --refit; "
                                        "default: model.json's default_model)")
    args = parser.parse_args(argv)

    try:  # all bad input is found here: the model directory, then every input decoded
        check_out(args.out)
        check_model_dir(args.model_dir)
        model = runtime.open_model(Path(args.model_dir), args.model, args.backend)
        data = inputs.load(args.inputs, invert=args.invert, progress=Progress("decoding", "files"))
    except (BundleError, inputs.InputError) as e:
        fail(f"predict.py: error: {e}")

    for note in data.notes:
        print(note, file=sys.stderr)
    n = len(data.names)
    print(f"device: {model.device}; model '{model.name}' from {args.model_dir}; {n} image{'s' * (n != 1)}",
          file=sys.stderr)
    probs = model.predict(data.images, progress=Progress("classifying", "images"))

    results = rows(data, probs, model.classes, args.top)
    with open(args.out, "w", newline="") if args.out else contextlib.nullcontext(sys.stdout) as out:
        if args.format == "table":
            write_table(results, args.top, out)
        elif args.format == "csv":
            write_csv(results, out)
        else:
            write_jsonl(results, out)
    return EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `predict.py ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(EXIT_FAILURE)
