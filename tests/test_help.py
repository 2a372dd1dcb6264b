"""`tune.py --help` as a newcomer reads it (no Ray): the common flags first, every flag with a help line and
its values in the quick and full presets (from PRESETS, not the dataclass defaults no run uses), the choices,
the examples at the end, and no word broken across lines at 80 or 120 columns."""
import re

import pytest

from distributed.cli_help import GROUPS, HELP, flag_help
from distributed.config import PRESETS, SCHEDULERS, SEARCHABLE, leaf_fields
from tests.conftest import load_script

TOP_LEVEL_FLAGS = ("preset", "name", "storage_path", "resume")


def help_text(monkeypatch, capsys, columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as e:
        load_script("tune").main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


def entries(text: str) -> dict[str, str]:
    """'--flag' -> its invocation and help joined into one line (a flag's entry starts at a 2-space indent)."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"  (-h, )?(--[a-z-]+)", line)
        if m:
            current = m.group(2)
            out[current] = " ".join(line.split())
        elif current and line.startswith("   "):
            out[current] += " " + " ".join(line.split())
        else:
            current = None
    return out


@pytest.fixture(params=[80, 120])
def text(request, monkeypatch, capsys):
    return help_text(monkeypatch, capsys, request.param)


def value(v) -> str:
    """How --help should show a preset's value (written out here, apart from cli_help.show)."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def test_the_preset_values_are_what_the_presets_use(text):
    quick, full = PRESETS["quick"], PRESETS["full"]
    flags = entries(text)
    assert flags["--epochs"].endswith(f"[quick {quick.train.epochs}, full {full.train.epochs}]")
    assert flags["--epochs"].endswith("[quick 6, full 30]")
    assert flags["--num-samples"].endswith("[quick 5, full 40]")
    assert flags["--tta-flip"].endswith("[quick and full: on]")  # the dataclass default (off) is no run's
    assert flags["--limit-train"].endswith("[quick 20000, full all 60000]")
    assert flags["--space"].endswith("[quick: lr, weight_decay, dropout, label_smoothing; full: all]")
    assert flags["--num-gpus"].endswith("[quick and full: every visible GPU]")
    assert "base default" not in text
    shown = 0
    for name, (section, _) in leaf_fields().items():
        q, f = getattr(getattr(quick, section), name), getattr(getattr(full, section), name)
        entry = flags[f"--{name.replace('_', '-')}"]
        if q is None or f is None or isinstance(q, tuple):
            continue  # the cases above
        if q == f:
            assert entry.endswith(f"[quick and full: {value(q)}]"), entry
        else:
            assert entry.endswith(f"[quick {value(q)}, full {value(f)}]"), entry
            shown += 1
    assert shown == 8  # epochs, num_samples, grace_period, width, depth, convs_per_block, fc_width, batch_size


def test_choices(text):
    flags = entries(text)
    assert flags["--preset"].startswith(f"--preset {{{','.join(PRESETS)}}} ")
    assert flags["--preset"].startswith("--preset {smoke,quick,full} ")
    assert flags["--scheduler"].startswith("--scheduler {asha,fold-asha,fifo} ")
    assert SCHEDULERS == ("asha", "fold-asha", "fifo")
    assert flags["--keep-checkpoints"].startswith("--keep-checkpoints {all,best,topk:N} ")
    assert f"any of: {', '.join(SEARCHABLE)} [" in flags["--space"]
    assert flags["--tta-flip"].startswith("--tta-flip {on,off} ")


def test_every_flag_has_a_help_line_and_a_group(text):
    flags = entries(text)
    expected = {f"--{n.replace('_', '-')}" for n in (*leaf_fields(), *TOP_LEVEL_FLAGS)} | {"--help", "--ray-logs"}
    assert set(flags) == expected
    for name in (*leaf_fields(), *TOP_LEVEL_FLAGS):
        assert len(HELP[name].split()) >= 3, name  # words, not a config path
        assert " ".join(HELP[name].split()) in flags[f"--{name.replace('_', '-')}"], name
    assert flags["--help"] == "-h, --help show this help and exit"
    assert flags["--ray-logs"].startswith("--ray-logs stream Ray's worker and Train logs")
    grouped = [n for _, _, names in GROUPS for n in names]
    assert sorted(grouped) == sorted((*leaf_fields(), *TOP_LEVEL_FLAGS))  # each flag in exactly one group
    assert set(HELP) == set(grouped)


def test_the_common_flags_come_first_and_the_examples_last(text):
    lines = text.splitlines()
    assert lines[0] == "usage: tune.py [--preset PRESET] [--num-gpus N] [--name NAME] [--resume] [...]"
    headings = [l for l in lines if re.fullmatch(r"[a-z][a-z ]*:", l)]
    assert headings == ["common options:", "search:", "model and training:", "data:", "resources:", "advanced:",
                        "examples:"]
    common = lines[lines.index("common options:") + 1:lines.index("search:")]
    firsts = [re.match(r"  (-h, )?(--[a-z-]+)", l).group(2) for l in common if re.match(r"  -", l)]
    assert firsts == ["--help", "--preset", "--num-gpus", "--name", "--resume", "--storage-path", "--epochs",
                      "--num-samples", "--address"]
    examples = lines[lines.index("examples:") + 1:]
    commands = [l.strip() for l in examples if l.strip().startswith("python experiments/tune.py")]
    assert len(commands) == 4 and examples[-1] == "  python experiments/tune.py --address auto --storage-path " \
                                                  "/mnt/shared/results"
    assert "  python experiments/tune.py --num-gpus 4       # the full preset on 4 GPUs" in examples
    assert "  python experiments/tune.py --name NAME --resume   # continue the run NAME" in examples


@pytest.mark.parametrize("columns", [80, 120])
def test_nothing_wraps_inside_a_word(monkeypatch, capsys, columns):
    """Each flag's help, whole words in order, is a run of the output's words: a word broken across two lines
    (argparse's 'bat ch_size', or '--num-' / 'gpus') would be two words that match neither."""
    text = help_text(monkeypatch, capsys, columns)
    words = text.split()
    joined = " " + " ".join(words) + " "
    leaves = leaf_fields()
    for name in (*leaves, *TOP_LEVEL_FLAGS):
        expected = " ".join(flag_help(name, leaves[name][0] if name in leaves else None).split())
        assert f" {expected} " in joined, name
    for identifier in (*SEARCHABLE, "fold-asha", "--max-concurrent-trials", "--num-gpus", "STORAGE_PATH/NAME",
                       "PRESET-YYYYmmdd-HHMMSS", "s3://BUCKET/PREFIX,", "$FASHION_MNIST_DIR,"):
        assert any(w.strip(",;[]()") == identifier.strip(",") for w in words), identifier
    assert max(len(l) for l in text.splitlines()) <= columns


def test_help_does_not_change_what_a_run_gets():
    """The flags still default to the preset's value (argparse.SUPPRESS): --help only describes them."""
    from distributed.cli import ArgumentParser, add_config_flags, config_from_args
    parser = ArgumentParser(prog="tune.py")
    add_config_flags(parser)
    args = parser.parse_args(["--name", "x", "--tta-flip", "off", "--space", "lr,dropout"])
    cfg = config_from_args(args, "full")
    assert (cfg.train.epochs, cfg.train.tta_flip, cfg.search.space, cfg.search.num_samples) == (
        30, False, ("lr", "dropout"), 40)
    assert args.storage_path is None and args.preset is None and args.resume is False


@pytest.mark.parametrize("columns", [30, 50, 80])
def test_the_formatter_breaks_lines_only_at_spaces(monkeypatch, columns):
    """What the old --help did at 80 columns ('bat ch_size': argparse breaks words longer than the line, and at
    hyphens): the formatter tune.py uses keeps each word whole, however narrow the terminal."""
    import argparse

    from distributed.cli_help import HelpFormatter
    monkeypatch.setenv("COLUMNS", str(columns))
    words = ["lr,weight_decay,dropout,batch_size,width,depth,label_smoothing,erase_p", "--max-concurrent-trials",
             "(--num-gpus", "above", "0,", "PRESET-YYYYmmdd-HHMMSS)"]

    def rendered(formatter_class):
        parser = argparse.ArgumentParser(prog="tune.py", formatter_class=formatter_class)
        parser.add_argument("--space", help=" ".join(words * 2))
        return parser.format_help().split()

    assert words * 2 == [w for w in rendered(HelpFormatter) if w in words]
    assert not set(words) <= set(rendered(argparse.HelpFormatter))  # the default formatter breaks some of them
