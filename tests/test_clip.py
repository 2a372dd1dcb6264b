"""CLIP analysis: preprocessing against open_clip's own, the zero-shot arithmetic against an oracle encoder,
retrieval and probe helpers, weights resolution offline, and the CLI end to end on the tiny random-init
architecture (tiny-test-vit), including a local checkpoint round trip and the bad-input exits."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import clip_encoders, clip_probe, clip_report, clip_retrieval, clip_weights, clip_zeroshot, metrics
from conftest import ROOT, load_script
from distributed.config import CLASS_NAMES, NUM_CLASSES, PRESETS, ConfigError, override, save

D = 64  # oracle embedding width


# --- preprocessing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 224])
def test_batched_preprocess_matches_open_clip_pil_transform(fmnist, size):
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image
    cfg = PreprocessCfg(size=size)
    transform = image_transform_v2(cfg, is_train=False)  # what open_clip.create_model_and_transforms returns
    reference = torch.stack([transform(Image.fromarray(a)) for a in fmnist.test_x[:24]])
    ours = clip_encoders.preprocess(torch.tensor(fmnist.test_x[:24]), dataclasses.asdict(cfg))
    assert ours.shape == reference.shape == (24, 3, size, size)
    grey_levels = ((ours - reference) * torch.tensor(cfg.std).view(1, 3, 1, 1) * 255).abs()
    assert grey_levels.max() <= 1.01             # PIL and torch round a few half-levels differently
    assert (grey_levels > 0.5).float().mean() < 1e-3


# --- the zero-shot arithmetic, proven with an oracle encoder ------------------------------------------

class OracleEncoder:
    """Text: a prompt maps to the basis vector of the class its words name (matched by name, whatever order
    the classes are listed in). Images carry their class in pixel (0, 0); an image's embedding is its class's
    basis vector plus N(0, sigma^2) noise per dimension, from a fixed seed."""

    logit_scale = 100.0

    def __init__(self, sigma: float, seed: int = 0):
        self.basis = np.linalg.qr(np.random.default_rng(123).normal(size=(D, NUM_CLASSES)))[0].T  # orthonormal rows
        self.sigma, self.seed = sigma, seed

    def encode_text(self, texts):
        return np.stack([self.basis[clip_retrieval.query_class(t)] for t in texts])

    def encode_images(self, images, progress=None):
        noise = np.random.default_rng(self.seed).normal(size=(len(images), D))
        return self.basis[images[:, 0, 0]] + self.sigma * noise


def oracle_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % NUM_CLASSES
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = labels
    return images, labels


def expected_accuracy(sigma: float) -> float:
    """P(correct) for orthonormal class vectors: the true class's score 1 + sigma z_c must beat 9 independent
    sigma z_j, so P = E_z[Phi(1/sigma + z)^9] over z ~ N(0, 1)."""
    from scipy.stats import norm
    z = np.linspace(-10, 10, 20001)
    return float(np.clip(np.trapezoid(norm.pdf(z) * norm.cdf(1 / sigma + z) ** (NUM_CLASSES - 1), z), 0, 1))


def test_oracle_encoder_at_zero_noise_is_perfect():
    images, labels = oracle_images(200)
    zs = clip_zeroshot.run_zero_shot(OracleEncoder(sigma=0.0), images, labels)
    assert zs.metrics["acc"] == 1.0 and zs.metrics["macro_f1"] == 1.0
    assert np.array_equal(np.array(zs.metrics["confusion"]), np.diag(np.bincount(labels)))
    assert zs.metrics["most_confused"] == []
    assert np.allclose(zs.class_emb, OracleEncoder(0.0).basis, atol=1e-6)  # the ensemble mean of identical prompts
    assert np.allclose(zs.probs.sum(1), 1) and np.array_equal(zs.probs.argmax(1), zs.pred)


def test_oracle_accuracy_falls_with_noise_as_predicted():
    images, labels = oracle_images(3000)
    sigmas = [0.05, 0.2, 0.3, 0.4, 0.6, 1.0, 20.0]
    accs = [clip_zeroshot.run_zero_shot(OracleEncoder(s, seed=1), images, labels).metrics["acc"] for s in sigmas]
    for s, acc in zip(sigmas, accs):
        p = expected_accuracy(s)
        assert abs(acc - p) < 4 * np.sqrt(p * (1 - p) / len(labels)) + 0.005, (s, acc, p)
    assert all(b <= a + 0.01 for a, b in zip(accs, accs[1:])), accs
    assert accs[0] == 1.0 and abs(accs[-1] - 1 / NUM_CLASSES) < 0.03


def test_permuting_class_names_permutes_the_confusion_matrix():
    images, labels = oracle_images(1000)
    base = clip_zeroshot.run_zero_shot(OracleEncoder(0.45, seed=2), images, labels).metrics
    perm = np.random.default_rng(0).permutation(NUM_CLASSES)      # new position i holds old class perm[i]
    inverse = np.argsort(perm)
    variants = {CLASS_NAMES[p]: clip_zeroshot.CLASS_VARIANTS[CLASS_NAMES[p]] for p in perm}
    permuted = clip_zeroshot.run_zero_shot(OracleEncoder(0.45, seed=2), images, inverse[labels], variants).metrics
    cm = np.array(base["confusion"])
    assert 0.3 < base["acc"] < 0.95 and np.count_nonzero(cm - np.diag(np.diag(cm))) > 20  # a non-trivial matrix
    assert np.array_equal(np.array(permuted["confusion"]), cm[np.ix_(perm, perm)])
    assert permuted["per_class"] == base["per_class"] and permuted["acc"] == base["acc"]


# --- small pure helpers ----------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("a photo of a t-shirt", "T-shirt/top"), ("a photo of a shirt", "Shirt"), ("a photo of a bag", "Bag"),
    ("two sandals", "Sandal"), ("A photo of ANKLE BOOTS", "Ankle boot"), ("a running shoe", "Sneaker"),
    ("a shirt or a coat", None), ("a photo of a cat", None), ("topology", None),
])
def test_query_class_matches_whole_words(query, expected):
    found = clip_retrieval.query_class(query)
    assert (None if found is None else CLASS_NAMES[found]) == expected


def test_retrieve_returns_best_first_and_clips_k():
    emb = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], np.float32)
    idx, scores = clip_retrieval.retrieve(np.array([1.0, 0.1]), emb, k=3)
    assert idx.tolist() == [0, 1, 2] and np.all(np.diff(scores) < 0)
    assert len(clip_retrieval.retrieve(np.array([1.0, 0.0]), emb, k=10)[0]) == 4


def test_most_confused_cells_are_the_reports_and_json_ready():
    cm = np.array([[5, 2, 0], [3, 4, 3], [0, 1, 9]])
    true = np.repeat(np.repeat(np.arange(3), 3), cm.ravel())  # one (true, pred) pair per counted image
    pred = np.repeat(np.tile(np.arange(3), 3), cm.ravel())
    names = ("a", "b", "c")
    listed = clip_zeroshot.classification_metrics(true, pred, names)["most_confused"]
    assert listed == metrics.most_confused(cm, clip_zeroshot.MOST_CONFUSED, names).to_dict("records")
    assert [(c["true"], c["predicted"], c["count"]) for c in listed] == [
        ("b", "c", 3), ("b", "a", 3), ("a", "b", 2), ("c", "b", 1)]  # ties as analysis.metrics orders them
    assert json.loads(json.dumps(listed)) == listed and listed[0]["share_of_true"] == pytest.approx(0.3)


def test_linear_probe_on_separable_features():
    from distributed.folds import make_folds
    rng = np.random.default_rng(0)
    labels = np.arange(300) % NUM_CLASSES
    feats = np.eye(NUM_CLASSES)[labels] * 5 + rng.normal(scale=0.1, size=(300, NUM_CLASSES))
    folds = make_folds(labels, 3, 0)
    out = clip_probe.linear_probe(feats, labels, folds, feats[:50], labels[:50])
    assert out["acc_per_fold"] == [1.0, 1.0, 1.0] and out["acc"] == 1.0 and out["folds"] == 3
    assert out["test_acc"] == 1.0 and set(out["test_per_class_f1"]) == set(CLASS_NAMES)
    noise = clip_probe.linear_probe(rng.normal(size=(300, 8)), labels, folds)
    assert noise["acc"] < 0.3 and "test_acc" not in noise


# --- weights resolution, offline -------------------------------------------------------------------

def test_auto_and_random_weights():
    # no published weights
    assert clip_weights.resolve_weights(clip_weights.TEST_MODEL).pretrained == clip_weights.RANDOM
    assert clip_weights.resolve_weights(clip_weights.TEST_MODEL, "random").checkpoint is None


@pytest.mark.parametrize("pretrained, message", [
    ("/no/such/file.pt", "no such checkpoint file"), ("laion2b_typo", "neither a checkpoint file nor a pretrained tag"),
    (str(ROOT / "analysis"), "is a directory; pass the checkpoint file in it"),
])
def test_bad_pretrained_values(pretrained, message):
    with pytest.raises(ConfigError, match=message):
        clip_weights.resolve_weights("ViT-B-32", pretrained)


def test_unreachable_hub_says_how_to_supply_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(clip_weights, "url_reachable", lambda url, timeout=0: False)
    with pytest.raises(ConfigError) as err:
        clip_weights.resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    text = str(err.value)
    assert "cannot be reached" in text and "--pretrained PATH" in text and "--cache-dir" in text
    assert str(tmp_path) in text and "\n" not in text


def test_hf_hub_offline_is_respected_without_a_network_check(monkeypatch, tmp_path):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(clip_weights, "url_reachable", lambda *a, **k: pytest.fail("probed the network"))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        clip_weights.resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))


def test_a_cached_tag_resolves_to_the_cached_file_offline(monkeypatch, tmp_path):
    """The Hugging Face cache layout for laion/CLIP-ViT-B-32-laion2B-s34B-b79K, as --cache-dir points at it."""
    monkeypatch.setattr(clip_weights, "url_reachable", lambda *a, **k: pytest.fail("probed the network"))
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    w = clip_weights.resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert w.checkpoint == str(snapshot / "open_clip_pytorch_model.bin") and w.pretrained == "laion2b_s34b_b79k"
    assert w.preprocess["interpolation"] == "bicubic" and not w.quick_gelu


def test_offline_failure_exits_2_with_one_line_quickly(tmp_path):
    """The real command in a fresh process. HF_ENDPOINT points at a closed local port so that a machine with
    internet fails the same way instead of downloading 600 MB; HF_HOME is empty so nothing is cached."""
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "clip_zeroshot.py"), "--model", "ViT-B-32",
                           "--pretrained", "laion2b_s34b_b79k", "--limit", "100", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)  # generous: imports on a busy box
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "--pretrained PATH" in lines[0]
    assert not out.exists()


# --- the CLI end to end on the tiny architecture -----------------------------------------------------

def run_cli(*argv) -> int:
    return load_script("clip_zeroshot").main([str(a) for a in argv])


def tiny(*argv):
    """tiny-test-vit on 60 test images, one small retrieval grid (figures dominate the run time); later flags win."""
    return ("--model", clip_weights.TEST_MODEL, "--limit", 60, "--num-gpus", 0, "--top-k", 4, "--queries", "a bag",
            *argv)


def test_cli_end_to_end_writes_consistent_results_and_a_report_section(tmp_path):
    out = tmp_path / "clip"
    queries = ["a photo of a bag", "something shiny"]
    assert run_cli(*tiny("--out", out, "--probe-limit", 100, "--top-k", 5, "--queries", *queries)) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["model"], m["pretrained"], m["split"], m["n_images"]) == (clip_weights.TEST_MODEL, "random", "test", 60)
    cm = np.array(m["confusion"])
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.sum() == 60
    assert sum(c["support"] for c in m["per_class"].values()) == 60 == cm.sum(1).sum()
    assert [c["support"] for c in m["per_class"].values()] == cm.sum(1).tolist() == [6] * NUM_CLASSES
    assert m["acc"] == pytest.approx(np.trace(cm) / cm.sum())
    assert m["macro_f1"] == pytest.approx(np.mean([c["f1"] for c in m["per_class"].values()]))
    assert m["prompts"]["templates"] == list(clip_zeroshot.TEMPLATES) and m["throughput_img_s"] > 0

    preds = pd.read_parquet(out / "predictions.parquet")
    probs = preds[[f"prob_{n}" for n in CLASS_NAMES]].to_numpy()
    assert len(preds) == 60 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(1), preds["pred"]) and preds["index"].is_unique
    assert np.array_equal(pd.crosstab(preds["true"], preds["pred"]).reindex(
        index=range(10), columns=range(10), fill_value=0).to_numpy(), cm)

    assert [r["query"] for r in m["retrieval"]] == queries
    bag, shiny = m["retrieval"]
    assert (bag["class"], shiny["class"], shiny["precision_at_k"]) == ("Bag", None, None)
    assert bag["top_k"] == 5 and len(bag["indices"]) == 5 and bag["scores"] == sorted(bag["scores"], reverse=True)
    assert set(bag["indices"]) <= set(preds["index"])
    truth = preds.set_index("index").loc[bag["indices"], "true"]
    assert bag["precision_at_k"] == pytest.approx((truth == CLASS_NAMES.index("Bag")).mean())
    for name in [m["files"]["confusion_matrix"]] + [r["file"] for r in m["retrieval"]]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lp = m["linear_probe"]
    assert lp["folds"] == 5 and lp["n_train"] == 100 and len(lp["acc_per_fold"]) == 5
    assert lp["acc"] == pytest.approx(np.mean(lp["acc_per_fold"])) and 0 <= lp["test_acc"] <= 1

    cnn = {n: {"f1": 0.9, "recall": 0.8, "support": 100} for n in CLASS_NAMES}
    section = clip_report.report_section(out, cnn)
    assert section["metrics"] == {k: m[k] for k in ("model", "pretrained", "acc", "macro_f1", "split", "n_images")}
    page = section["html"]
    assert page.count("data:image/png;base64,") == 2 + len(queries)   # confusion, per-class F1, grids
    assert "CNN (from the run)" in page and "0.8000" in page and "Random weights" in page and "linear probe" in page
    assert 'src="http' not in page and "<script" not in page and "<link" not in page  # nothing fetched
    assert clip_report.report_section(out, None)["html"].count("<figure><img") == 2 + len(queries)


def fake_run_dir(tmp_path, limit_train=100, folds=3):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save(override(PRESETS["smoke"], limit_train=limit_train, folds=folds), run_dir / "config.json")
    return run_dir


def test_cli_run_dir_probes_on_the_runs_own_folds(tmp_path, fmnist):
    from distributed.data import stratified_subset
    from distributed.folds import make_folds, split_fingerprint
    run_dir = fake_run_dir(tmp_path)
    positions = stratified_subset(fmnist.train_y, 100, 0)
    fp = split_fingerprint(make_folds(fmnist.train_y[positions], 3, 0), positions)
    (run_dir / "summary.json").write_text(json.dumps({"split_fingerprint": fp}))
    assert run_cli(*tiny("--run-dir", run_dir, "--split", "train")) == 0
    m = json.loads((run_dir / "clip" / "metrics.json").read_text())
    lp = m["linear_probe"]
    assert (lp["folds"], lp["n_train"], lp["split_fingerprint"]) == (3, 100, fp)
    assert "test_acc" not in lp and m["split"] == "train"  # train-split images may be in the probe's training set


def test_cli_run_dir_with_other_folds_is_refused(tmp_path, capsys):
    run_dir = fake_run_dir(tmp_path)
    (run_dir / "summary.json").write_text(json.dumps({"split_fingerprint": "0000000000000000"}))
    with pytest.raises(SystemExit) as e:
        run_cli(*tiny("--run-dir", run_dir))
    assert e.value.code == 2 and "split fingerprint" in capsys.readouterr().err
    assert not (run_dir / "clip").exists()


def test_local_checkpoint_gives_identical_predictions(tmp_path):
    import torch
    ckpt = tmp_path / "tiny.pt"
    random_init = clip_weights.Weights(clip_weights.TEST_MODEL, clip_weights.RANDOM, None)
    torch.save(clip_weights.build_model(random_init).state_dict(), ckpt)
    assert run_cli(*tiny("--out", tmp_path / "random", "--no-probe")) == 0
    assert run_cli(*tiny("--out", tmp_path / "file", "--no-probe", "--pretrained", ckpt)) == 0
    a, b = (pd.read_parquet(tmp_path / d / "predictions.parquet") for d in ("random", "file"))
    assert np.array_equal(a["pred"], b["pred"]) and np.allclose(a.filter(like="prob_"), b.filter(like="prob_"))
    assert json.loads((tmp_path / "file" / "metrics.json").read_text())["pretrained"] == str(ckpt)
    # a different init really changes them: the equality above is not vacuous
    other = clip_weights.build_model(random_init)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    torch.save(other.state_dict(), ckpt)
    assert run_cli(*tiny("--out", tmp_path / "other", "--no-probe", "--pretrained", ckpt)) == 0
    c = pd.read_parquet(tmp_path / "other" / "predictions.parquet")
    assert not np.allclose(a.filter(like="prob_"), c.filter(like="prob_"))


@pytest.mark.parametrize("argv, message", [
    (("--model", "ViT-B-33"), "--model ViT-B-33: unknown open_clip architecture; did you mean ViT-B-32"),
    (("--model", clip_weights.TEST_MODEL, "--limit", "0"), "--limit 0: must be at least 10"),
    (("--model", clip_weights.TEST_MODEL, "--limit", "-5"), "--limit -5"),
    (("--model", clip_weights.TEST_MODEL, "--pretrained", "openai"), "it has no published weights"),
    (("--model", clip_weights.TEST_MODEL, "--queries", " "), "--queries: a query is empty"),
    (("--model", clip_weights.TEST_MODEL, "--split", "val"), "invalid choice: 'val'"),
    (("--model", clip_weights.TEST_MODEL, "--top-k", "0"), "--top-k 0"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(*argv, "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(SystemExit) as e:
        run_cli(*tiny("--pretrained", bad, "--out", tmp_path / "out"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and f"--pretrained {bad}: cannot load it into {clip_weights.TEST_MODEL}" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
