"""The analysis report of a finished (or partial) run: from a run directory to report/report.html.

Loads the run's tables, evaluates the best trial's K fold models (out-of-fold predictions, the test-set
ensemble, embeddings), and writes RUN_DIR/report/: report.html (self-contained: opens from disk with no
network), metrics.json, figures/*.png and the Parquet tables behind them in tables/.

    python experiments/report.py results/quick
    python experiments/report.py results/full --num-gpus 1 --umap-samples 10000
    python experiments/report.py results/smoke --no-umap --out /tmp/smoke-report
    python experiments/report.py s3://my-bucket/runs/full   # a run stored in a bucket: fetched to results/full

Exit codes: 0 done; 2 bad input (one line on stderr; nothing is written); 1 a failure while building.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distributed.cli import ArgumentParser, elapsed_log, fail  # noqa: E402
from distributed.config import EXIT_OK, ConfigError  # noqa: E402


def umap_samples(text: str) -> int:
    # UMAP's class-stratified sample needs a few images per class; 20 is the least that works.
    if not text.isdigit() or int(text) < 20:
        raise argparse.ArgumentTypeError(f"expected an integer >= 20, got '{text}'")
    return int(text)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory written by experiments/tune.py (results/NAME), or the "
                                        "URI of one stored in a bucket (s3://BUCKET/PREFIX/NAME)")
    parser.add_argument("--out", help="report directory (default: RUN_DIR/report)")
    parser.add_argument("--no-umap", action="store_true", help="skip the UMAP maps (section 6)")
    parser.add_argument("--umap-samples", type=umap_samples, default=5000,
                        help="test images in each UMAP map (default 5000; 10000 = all)")
    parser.add_argument("--num-gpus", type=int, default=None,
                        help="GPUs for inference (default: one if there is any; 0 = CPU)")
    args = parser.parse_args(argv)

    log = elapsed_log()

    import torch

    from analysis import evaluate, run_tables
    from distributed import storage
    try:  # all bad input is found here, before anything is computed or written
        run = run_tables.load_run(storage.fetch_run(args.run_dir))  # s3:// and gs:// runs: a local copy first
        if storage.fetch_checkpoint(run.run_dir, run.config.storage_path, run.config.name,
                                    run.summary["best_checkpoint"]):
            log(f"fetched the best trial's fold checkpoints from {run.config.storage_path}")
        evaluate.check_inputs(run)
        devices = evaluate.inference_devices(run.folds, args.num_gpus, torch.cuda.device_count())
        out = Path(args.out) if args.out else run.run_dir / "report"
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        data = evaluate.load_data(run)
    except ConfigError as e:
        fail(f"report.py: error: {e}")

    from analysis.html import page
    from analysis.sections import Options, build
    from distributed.files import write_bytes_atomic, write_json_atomic

    from distributed.lock import writing_note
    if note := writing_note(run.run_dir):
        log(f"{note}; the report shows it as it is now")
    log(f"run {run.summary['name']}: {len(run.trials)} trials, best {run.best_trial_id}; "
        f"evaluating its {run.folds} fold models on {', '.join(sorted(set(devices)))}")
    ev = evaluate.evaluate_best(run, data, devices, log=log)
    opts = Options(umap=not args.no_umap, umap_samples=args.umap_samples)
    sections, metrics = build(run, data, ev, opts, log)

    for section in sections:  # files first, the page last: report.html appears only when all is there
        for name, png in section.figures.items():
            write_bytes_atomic(out / "figures" / f"{name}.png", png)
        for name, df in section.tables.items():
            write_bytes_atomic(out / "tables" / f"{name}.parquet", df.to_parquet(index=False))
    write_json_atomic(out / "metrics.json", metrics)
    subtitle = (f"Run {run.summary['name']} ({run.run_dir}): {run.summary.get('preset')} preset, "
                f"{run.folds}-fold CV, best trial {run.best_trial_id}. Built {time.strftime('%Y-%m-%d %H:%M')}.")
    write_bytes_atomic(out / "report.html", page("Fashion-MNIST search report", subtitle, sections).encode())

    log(f"test accuracy {metrics['test_acc']:.4f} (ensemble), out-of-fold {metrics['oof_val_acc']:.4f}; "
        f"CLIP {'included' if metrics['clip'] else 'not included'}")
    print(f"report: {out / 'report.html'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
