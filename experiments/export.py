"""Export a run's trial (default: the best) as a model ready to use: results/NAME/model/.

Writes the trial's K fold models as one ensemble in ONNX and TorchScript (uint8 images (N, 28, 28) in, the
mean of the fold models' softmax out, the scaling to [-1, 1] and the flip TTA inside), checks parity of both
files against the trained models on the 10,000 test images, measures CPU latency, and writes model.json
and MODEL_CARD.md. With --refit, also trains the configuration once more on all the run's training
images (one Ray Train worker, on a GPU when there is one) and exports that single model beside it.

    python experiments/export.py results/quick
    python experiments/export.py results/quick --trial 3f2a9c1e     # any trial, e.g. one on the size front
    python experiments/export.py results/quick --refit

Exit codes: 0 written; 2 bad input (one line on stderr; nothing is written); 1 the exported files failed
the parity check, or another failure (nothing is written; an existing model directory stays as it was).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distributed.cli import ArgumentParser, elapsed_log, fail  # noqa: E402
from distributed.config import EXIT_FAILURE, EXIT_OK, ConfigError  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory written by experiments/tune.py (results/NAME)")
    parser.add_argument("--trial", help="the trial to export (default: the run's best trial)")
    parser.add_argument("--out", help="model directory to write (default: RUN_DIR/model)")
    parser.add_argument("--refit", action="store_true",
                        help="also train the configuration on all training images and export that single model")
    parser.add_argument("--refit-device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where --refit trains (default auto: a GPU when there is one)")
    args = parser.parse_args(argv)

    log = elapsed_log()

    from deploy import export
    try:  # all bad input is found here, before anything is computed or written
        import torch
        if args.refit_device == "gpu" and not torch.cuda.is_available():
            raise ConfigError("--refit-device gpu: torch sees no CUDA GPU on this machine")
        plan = export.plan(args.run_dir, args.trial, args.out)
    except ConfigError as e:
        fail(f"export.py: error: {e}")

    from distributed.lock import writing_note
    if note := writing_note(plan.run.run_dir):
        log(f"{note}; exporting trial {plan.trial_id} as it is now")
    log(f"run {plan.run.summary['name']}: exporting trial {plan.trial_id}"
        f"{' (the best)' if plan.trial_id == plan.run.best_trial_id else ''} to {plan.out}")
    refit_gpu = None if args.refit_device == "auto" else args.refit_device == "gpu"
    try:
        meta = export.export(plan, refit=args.refit, refit_gpu=refit_gpu, log=log)
    except export.ParityError as e:
        print(f"export.py: refused, nothing written: {e}", file=sys.stderr)
        return EXIT_FAILURE
    for name, m in meta["models"].items():
        log(f"{name}: test accuracy {m['test_acc']:.4f}, {m['params']:,} parameters, "
            f"{m['latency_ms']['batch_1']:.2f} ms/image at batch 1 (onnxruntime, CPU)")
    print(f"model: {plan.out}  (model card: {plan.out / 'MODEL_CARD.md'}; classify: "
          f"python experiments/predict.py {plan.out} IMAGE...)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
