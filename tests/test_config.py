"""The config tree: presets, overrides by name, validation messages, round trips, the default preset."""
import dataclasses

import pytest

from distributed.config import (PRESETS, SEARCHABLE, ConfigError, ExperimentConfig, apply_hparams, choose_preset,
                                from_dict, leaf_fields, override, to_dict, validate)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = PRESETS[name]
    validate(cfg)
    assert from_dict(to_dict(cfg)) == cfg


def test_override_by_leaf_name():
    cfg = override(PRESETS["quick"], lr=0.01, folds=3, name="x", space=("lr",))
    assert (cfg.train.lr, cfg.cv.folds, cfg.name, cfg.search.space) == (0.01, 3, "x", ("lr",))
    assert cfg.model == PRESETS["quick"].model


def test_unknown_keys_fail_loudly():
    with pytest.raises(ConfigError, match="unknown config field 'learning_rate'"):
        override(PRESETS["quick"], learning_rate=1)
    d = to_dict(PRESETS["quick"])
    d["train"]["lr_max"] = 1
    with pytest.raises(ConfigError, match=r"unknown keys \['lr_max'\] in config section 'train'"):
        from_dict(d)


def test_leaf_names_unique_and_cover_searchable():
    leaves = leaf_fields()
    assert set(SEARCHABLE) <= set(leaves)
    total = sum(len(dataclasses.fields(getattr(ExperimentConfig(), s))) for s in
                ("data", "model", "train", "cv", "search", "resources"))
    assert len(leaves) == total


@pytest.mark.parametrize("values, message", [
    (dict(folds=1), "--folds 1: cross-validation needs at least 2 folds"),
    (dict(epochs=0), "--epochs 0: must be a positive integer"),
    (dict(num_samples=-3), "--num-samples -3: must be a positive integer"),
    (dict(limit_train=20), "--limit-train 20: must be at least folds x classes = 50"),
    (dict(lr=0.0), "--lr 0.0: must be > 0"),
    (dict(dropout=1.0), r"--dropout 1.0: must be in \[0, 1\)"),
    (dict(depth=4), "--depth 4: must be 1, 2 or 3"),
    (dict(scheduler="hyperband"), "--scheduler hyperband: choose 'asha', 'fold-asha' or 'fifo'"),
    (dict(space=("lr", "momentum")), "--space momentum: not searchable"),
    (dict(grace_period=9), r"--grace-period 9: must be between 1 and --epochs \(6\)"),
    (dict(num_gpus=-1.0), "--num-gpus -1.0: must be >= 0"),
    (dict(gpus_per_worker=1.5), r"--gpus-per-worker 1.5: must be in \(0, 1\]"),
    (dict(preset="huge"), "unknown preset 'huge'"),
    (dict(widths=()), "--widths : give one or more different integers, each at least 1"),
    (dict(batch_sizes=(128, 1)), "--batch-sizes 128,1: give one or more different integers, each at least 2"),
    (dict(fc_widths=(256, 256)), "--fc-widths 256,256: give one or more different integers"),
    (dict(ema_halflife=7.0), r"--ema-halflife 7.0: must be between 0 \(off\) and --epochs \(6\)"),
    (dict(name="../x"), "bad run name '../x'"),
])
def test_validate_names_the_bad_value(values, message):
    with pytest.raises(ConfigError, match=message):
        validate(override(PRESETS["quick"], **values))


def test_apply_hparams_routes_fields():
    model, train = apply_hparams(PRESETS["quick"], {"lr": 0.004, "width": 64, "dropout": 0.1, "erase_p": 0.3})
    assert (model.width, model.dropout, train.lr, train.erase_p) == (64, 0.1, 0.004, 0.3)
    with pytest.raises(ConfigError) as e:  # as every other bad value: one line naming it, exit 2 in a CLI
        apply_hparams(PRESETS["quick"], {"momentum": 0.9, "lr": 0.004, "beta": 1})
    assert str(e.value) == ("hyperparameters beta, momentum: not fields of ModelConfig or TrainConfig "
                            f"(the searchable ones are {', '.join(SEARCHABLE)})")


def test_flip_tta_is_a_train_field_off_for_smoke_and_on_for_quick_and_full():
    assert PRESETS["smoke"].train.tta_flip is False and ExperimentConfig().train.tta_flip is False
    assert PRESETS["quick"].train.tta_flip is True and PRESETS["full"].train.tta_flip is True
    assert leaf_fields()["tta_flip"][0] == "train"
    cfg = override(PRESETS["smoke"], tta_flip=True)
    assert cfg.train.tta_flip is True and from_dict(to_dict(cfg)) == cfg
    # a config.json written before the field existed (a resumed run) loads with TTA off
    d = to_dict(PRESETS["smoke"])
    del d["train"]["tta_flip"]
    assert from_dict(d).train.tta_flip is False


# (--preset, --num-gpus, GPUs there are, stored preset of a --resume, cluster?) -> (preset, the reason says)
PRESET_CHOICES = [
    ((None, None, 0, None, False), ("quick", "no GPU visible, training on the CPU; pass --preset full")),  # CPU only
    ((None, 4.0, 4, None, False), ("full", "--num-gpus 4; pass --preset quick for a short run")),  # 4 GPUs
    ((None, None, 4, None, False), ("full", "4 GPUs visible; pass --preset quick")),  # plain tune.py on a GPU box
    ((None, None, 1, None, False), ("full", "1 GPU visible;")),
    ((None, 0.0, 4, None, False), ("quick", "--num-gpus 0 trains on the CPU")),  # GPUs turned off
    (("smoke", 4.0, 4, None, False), ("smoke", "given by --preset")),  # an explicit --preset wins
    (("full", 0.0, 0, None, False), ("full", "given by --preset")),
    (("quick", None, 8, "full", False), ("quick", "given by --preset")),  # ... even on --resume
    ((None, None, 8, "smoke", False), ("smoke", "the stored run's")),  # --resume: no new guess
    ((None, 0.0, 0, "full", False), ("full", "the stored run's")),
    ((None, None, 16, None, True), ("full", "the Ray cluster can scale to 16 GPUs")),  # --address
    ((None, None, 0, None, True), ("quick", "the Ray cluster has no GPUs, training on the CPU")),
]


@pytest.mark.parametrize("given, expected", PRESET_CHOICES, ids=[str(c[0]) for c in PRESET_CHOICES])
def test_choose_preset_known_answers(given, expected):
    preset, why = choose_preset(*given)
    assert preset == expected[0] and expected[1] in why


def test_the_search_choices_travel_as_integers_through_config_json_and_the_command_line(capsys):
    import argparse

    from distributed.cli import ArgumentParser, add_config_flags
    cfg = override(PRESETS["full"], widths=(32, 64), batch_sizes=(512,))
    d = to_dict(cfg)
    assert d["search"]["widths"] == [32, 64] and d["search"]["fc_widths"] == [128, 256, 512]
    assert from_dict(d) == cfg and from_dict(d).search.widths == (32, 64)
    del d["search"]["widths"]  # a config.json written before the choices were settings: the old choices
    assert from_dict(d).search.widths == (16, 32, 64)

    parser = ArgumentParser(prog="tune.py", formatter_class=argparse.HelpFormatter)
    add_config_flags(parser)
    args = parser.parse_args(["--widths", "32,48", "--batch-sizes", "256", "--ema-halflife", "0.5"])
    assert (args.widths, args.batch_sizes, args.ema_halflife) == ((32, 48), (256,), 0.5)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--widths", "32,wide"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("tune.py: error: argument --widths: expected integers separated by commas, "
                                       "got '32,wide'\n")
