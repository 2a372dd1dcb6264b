"""CLIP on Fashion-MNIST, side by side with the CNN: zero-shot classification, text-to-image retrieval, and a
linear probe on frozen CLIP image embeddings cross-validated on the CNN run's own folds.

Writes metrics.json, confusion_matrix.png, one retrieval_NN_<query>.png per query and predictions.parquet
into RUN_DIR/clip (--run-dir) or --out; `experiments/report.py RUN_DIR` then shows them next to the CNN.

    python experiments/clip_zeroshot.py --model tiny-test-vit --limit 500 --out /tmp/clip   # random weights, seconds
    python experiments/clip_zeroshot.py --run-dir results/quick      # ViT-B-32 laion2b_s34b_b79k (downloads it)
    python experiments/clip_zeroshot.py --run-dir results/quick --pretrained ~/ckpt/open_clip_pytorch_model.bin
    python experiments/clip_zeroshot.py --model ViT-L-14 --pretrained openai --num-gpus 4 --run-dir results/full
"""
from __future__ import annotations

import io
import os
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import clip_encoders, clip_figures, clip_probe, clip_retrieval, clip_weights, clip_zeroshot  # noqa: E402
from analysis.plots_eval import plot_confusion  # noqa: E402
from analysis.style import to_png  # noqa: E402
from distributed.cli import ArgumentParser, fail  # noqa: E402
from distributed.config import CLASS_NAMES, EXIT_OK, NUM_CLASSES, ConfigError, DataConfig  # noqa: E402
from distributed.files import write_bytes_atomic, write_json_atomic  # noqa: E402

PROG = "clip_zeroshot.py"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32", help=f"open_clip architecture (default ViT-B-32; "
                   f"'{clip_weights.TEST_MODEL}' is a tiny random-init one for tests)")
    p.add_argument("--pretrained", default=clip_weights.AUTO, help="open_clip tag (laion2b_s34b_b79k, openai, ...), "
                   "a local checkpoint file, or 'random'; default auto: laion2b_s34b_b79k for ViT-B-32, the first tag "
                   "otherwise, random for architectures without published weights")
    p.add_argument("--cache-dir", help="where tagged weights are cached (default: the Hugging Face cache, HF_HOME)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="images to classify (default test)")
    p.add_argument("--limit", type=int, help="a class-stratified subset of N images of the split (default: all)")
    p.add_argument("--queries", nargs="+", default=list(clip_retrieval.DEFAULT_QUERIES), metavar="TEXT",
                   help="text-to-image queries (default: the seed's four, 'a photo of a bag' ...)")
    p.add_argument("--top-k", type=int, default=16, help="images per retrieval grid (default 16)")
    p.add_argument("--num-gpus", type=int, help="GPUs to embed on; >1 spreads the images over Ray actors "
                   "(default: all visible, 0 on a CPU box)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--run-dir", type=Path, help="a tune.py run directory: write to RUN_DIR/clip, probe on its folds")
    p.add_argument("--out", type=Path, help="output directory (default RUN_DIR/clip, else results/clip)")
    p.add_argument("--probe-limit", type=int, default=6000, help="training images of the linear probe without "
                   "--run-dir (default 6000, as the quick preset; 5 folds, seed 0)")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe (it embeds training images too)")
    p.add_argument("--data-dir", help="Fashion-MNIST IDX files (default: $FASHION_MNIST_DIR, then the Debian package)")
    return p


def check_args(args) -> None:
    """Everything wrong with the flags alone, before any data or weights are touched."""
    if args.limit is not None and args.limit < NUM_CLASSES:
        raise ConfigError(f"--limit {args.limit}: must be at least {NUM_CLASSES} (the subset is stratified by class)")
    for flag, value in (("batch-size", args.batch_size), ("top-k", args.top_k)):
        if value < 1:
            raise ConfigError(f"--{flag} {value}: must be a positive integer")
    if args.num_gpus is not None and args.num_gpus < 0:
        raise ConfigError(f"--num-gpus {args.num_gpus}: must be >= 0")
    if any(not q.strip() for q in args.queries):
        raise ConfigError("--queries: a query is empty; pass non-empty texts such as 'a photo of a bag'")
    if args.run_dir is not None and not (args.run_dir / "config.json").is_file():
        raise ConfigError(f"--run-dir {args.run_dir}: not a run directory of tune.py (no config.json)")
    if args.run_dir is None and not args.no_probe and args.probe_limit < 5 * NUM_CLASSES:
        raise ConfigError(f"--probe-limit {args.probe_limit}: must be at least 5 folds x {NUM_CLASSES} classes = "
                          f"{5 * NUM_CLASSES}, or pass --no-probe")
    clip_weights.check_model(args.model)


def progress(what: str):
    """A callback for encode_images that prints about every 10% of the images."""
    start, marks = time.perf_counter(), [0.1]

    def report(done: int, total: int):
        if done / total + 1e-9 >= marks[0] or done == total:
            print(f"  {what}: {done}/{total} images ({done / max(time.perf_counter() - start, 1e-9):.0f} img/s)",
                  flush=True)
            while marks[0] <= done / total + 1e-9:
                marks[0] += 0.1
    return report


def describe_devices(sharded, local) -> str:
    """'images on 2 Ray actors (2 x NVIDIA A10G), text on cpu': the driver may be a CPU-only cluster head."""
    from collections import Counter
    counts = Counter(sharded.devices())
    actors = ", ".join(f"{n} x {name}" for name, n in sorted(counts.items()))
    return f"images on {sum(counts.values())} Ray actors ({actors}), text on {local.device.type}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:  # bad input is found here and writes nothing
        check_args(args)
        import torch
        from distributed.data import load, stratified_subset
        data = load(DataConfig(data_dir=args.data_dir))
        split = clip_probe.probe_split(data.train_y, args.run_dir, args.probe_limit) if not args.no_probe else None
        num_gpus = torch.cuda.device_count() if args.num_gpus is None else args.num_gpus
        if num_gpus == 1 and not torch.cuda.is_available():
            raise ConfigError(f"--num-gpus {num_gpus}: no CUDA GPU is visible here; pass --num-gpus 0")
        weights = clip_weights.resolve_weights(args.model, args.pretrained, args.cache_dir)
        encoder = clip_encoders.load_encoder(weights, clip_encoders.local_device(num_gpus), args.batch_size)
        if num_gpus > 1:
            import ray
            if not ray.is_initialized():  # RAY_ADDRESS joins a running cluster; else a local one, on loopback
                from distributed.ray_init import init_ray
                init_ray(os.environ.get("RAY_ADDRESS"), log_to_driver=False, configure_logging=False)
            if ray.cluster_resources().get("GPU", 0) < num_gpus:
                raise ConfigError(f"--num-gpus {num_gpus}: the Ray cluster has {ray.cluster_resources().get('GPU', 0):g}")
    except ConfigError as e:
        fail(f"{PROG}: error: {e}")

    x, y = (data.test_x, data.test_y) if args.split == "test" else (data.train_x, data.train_y)
    positions = stratified_subset(y, args.limit, 0)
    images, labels = x[positions], y[positions]
    out = args.out or (args.run_dir / "clip" if args.run_dir else Path("results/clip"))

    (out / "metrics.json").unlink(missing_ok=True)  # written last, so its presence means "this run is complete"
    sharded = clip_encoders.RayImageEncoder(encoder, num_gpus) if num_gpus > 1 else nullcontext(encoder)
    with sharded as enc:
        device = describe_devices(enc, encoder) if num_gpus > 1 else (
            torch.cuda.get_device_name(0) if num_gpus == 1 else f"cpu ({torch.get_num_threads()} threads)")
        print(f"{args.model} ({weights.pretrained}) on {device}: {len(images)} {args.split} images -> {out}/",
              flush=True)
        n_prompts = sum(map(len, clip_zeroshot.class_prompts(clip_zeroshot.CLASS_VARIANTS)))
        print(f"embedding the images, then {n_prompts} class prompts ...", flush=True)
        zs = clip_zeroshot.run_zero_shot(enc, images, labels, progress=progress(f"{args.split} split"))
        print(f"zero-shot: accuracy {zs.metrics['acc']:.4f}, macro-F1 {zs.metrics['macro_f1']:.4f} "
              f"({zs.images_per_s:.0f} images/s)", flush=True)
        retrieval = []
        for i, query in enumerate(args.queries):
            top, scores = clip_retrieval.retrieve(enc.encode_text([query])[0], zs.image_emb, args.top_k)
            target = clip_retrieval.query_class(query)
            slug = re.sub(r"[^a-z0-9]+", "_", query.lower()).strip("_")[:40]
            retrieval.append({"query": query, "class": None if target is None else CLASS_NAMES[target],
                              "top_k": len(top), "file": f"retrieval_{i:02d}_{slug}.png",
                              "precision_at_k": None if target is None else float((labels[top] == target).mean()),
                              "indices": positions[top].tolist(), "scores": scores.tolist()})
            fig = clip_figures.retrieval_figure(images[top], labels[top], scores, query, target=target)
            write_bytes_atomic(out / retrieval[-1]["file"], to_png(fig))
        probe = None
        if split is not None:
            feats = enc.encode_images(data.train_x[split["positions"]], progress("linear probe, train"))
            print(f"fitting the linear probe on {len(feats)} embeddings, {len(split['folds'])} folds ...", flush=True)
            test = (zs.image_emb, labels) if args.split == "test" else (None, None)
            probe = clip_probe.linear_probe(feats, data.train_y[split["positions"]], split["folds"], *test)
            probe.update(source=split["source"], split_fingerprint=split["split_fingerprint"])
            print(f"linear probe: {probe['folds']}-fold CV accuracy {probe['acc']:.4f} ± {probe['acc_std']:.4f}"
                  + (f", {args.split} accuracy {probe['test_acc']:.4f}" if "test_acc" in probe else ""), flush=True)

    import pandas as pd
    table = pd.DataFrame({"index": positions, "true": labels, "pred": zs.pred,
                          **{f"prob_{n}": zs.probs[:, i] for i, n in enumerate(CLASS_NAMES)}})
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    write_bytes_atomic(out / "predictions.parquet", buf.getvalue())
    fig = plot_confusion(zs.metrics["confusion"], f"{args.model} ({weights.pretrained}), zero-shot")
    write_bytes_atomic(out / "confusion_matrix.png", to_png(fig))
    import open_clip
    write_json_atomic(out / "metrics.json", {
        "model": args.model, "pretrained": weights.pretrained, "checkpoint": weights.checkpoint,
        "split": args.split, "n_images": len(images), "limit": args.limit,
        **{k: zs.metrics[k] for k in ("acc", "macro_f1", "per_class", "confusion", "most_confused")},
        "class_names": list(CLASS_NAMES), "logit_scale": encoder.logit_scale,
        "prompts": {"templates": list(clip_zeroshot.TEMPLATES),
                    "class_variants": {k: list(v) for k, v in clip_zeroshot.CLASS_VARIANTS.items()}},
        "retrieval": retrieval, "linear_probe": probe,
        "throughput_img_s": zs.images_per_s, "device": device, "batch_size": args.batch_size,
        "versions": {"open_clip": open_clip.__version__, "torch": torch.__version__},
        "files": {"confusion_matrix": "confusion_matrix.png", "predictions": "predictions.parquet"},
    })
    print(f"results: {out}/")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
