"""The README is a newcomer's first screen: what the tool does, then `make run` and `make test` before any other
command, at most 200 lines, and everything it names exists: its links (and those of docs/), its make targets and
the flags of the scripts it runs (each script's own --help). No Ray: the scripts only print their --help."""
from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 200
FIRST_SCREEN = 40
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")  # inline code; may wrap onto the next line, as Markdown allows
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SCRIPT = re.compile(r"experiments/(\w+)\.py|-m (analysis\.browser)")
MAKE = re.compile(r"(?<![\w-])make ([a-z][\w-]*)")
COMMAND = re.compile(r"^\s*(python|make|ray|pip|aws|export|mkdir|ssh|cd|\.venv)\b")
# flags of commands that are not this project's: `ray job submit --address ... --working-dir .`
FOREIGN_FLAGS = {"--address", "--working-dir"}
# the sections about tune.py, where a flag in the text is one of tune.py's
TUNE_SECTIONS = ("On GPUs", "On a Ray cluster", "Presets and the flags you need", "Stopping and resuming")
STALE = ("is skipped until experiments/export.py exists", "6 trials took", "until then: `skipped`",
         "rungs at 3 and 12")


def text() -> str:
    return README.read_text()


def code_lines(block: str) -> list[str]:
    """A fenced block's commands: continuation lines joined, comments dropped."""
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def prose(md: str) -> str:
    """The text outside fenced blocks (fences blanked, so positions keep their meaning)."""
    return FENCE.sub(lambda m: " " * len(m.group(0)), md)


def sections(md: str) -> dict[str, str]:
    """'## Heading' -> its body, for every second-level heading."""
    parts = re.split(r"^## (.+)$", md, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path.read_text()), flags=re.M):
        s = slug(heading)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


@cache
def help_flags(script: str) -> frozenset[str]:
    """The flags a script's --help names (experiments/NAME.py, or a module run with -m)."""
    cmd = [sys.executable, "-m", script] if "." in script else [sys.executable, f"experiments/{script}.py"]
    done = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} --help: exit {done.returncode}: {done.stderr[-2000:]}"
    return frozenset(FLAG.findall(done.stdout))


def makefile_targets() -> dict[str, str]:
    """target -> its recipe, from the Makefile."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+):(?!=)", line)
        if m:
            current = m.group(1)
            targets[current] = ""
        elif line.startswith("\t") and current:
            targets[current] += line + "\n"
        elif line.strip() and not line.startswith("#"):
            current = None
    return targets


def scripts_named(md: str) -> set[str]:
    """The scripts the README runs: named directly, or behind the make targets it names."""
    names = {a or b for a, b in SCRIPT.findall(md)}
    recipes = makefile_targets()
    for target in MAKE.findall(md):
        names |= {a or b for a, b in SCRIPT.findall(recipes.get(target, ""))}
    return names


# --- the first screen ---------------------------------------------------------------------------------------

def test_make_run_and_make_test_come_first_within_the_first_40_lines():
    md = text()
    head = "\n".join(md.splitlines()[:FIRST_SCREEN])
    assert "make run" in head and "make test" in head
    first = code_lines(FENCE.search(md).group(1))
    assert first[:2] == ["make run", "make test"], first
    # no command at all (fenced or inline) before the first `make run`
    before = md[:md.index("make run")]
    commands = [c for c in SPAN.findall(before) if COMMAND.match(c)]
    assert FENCE.search(before) is None and not commands, commands


def test_the_first_paragraph_says_what_the_tool_does():
    intro = text().split("```")[0]
    assert intro.startswith("# fashion-mnist-tune\n")
    for words in ("Fashion-MNIST", "Ray Tune", "Optuna", "TPE", "ASHA", "5 folds", "5 Ray Train", "report"):
        assert words in intro, words


def test_readme_is_at_most_200_lines():
    n = len(text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; move internals to docs/"


# --- what the README names exists -----------------------------------------------------------------------------

@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    links = LINK.findall(prose(page.read_text()))
    if page == README:
        assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.is_file(), f"{page.name}: link {link} -> {path} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: link {link}: no heading '#{anchor}' in {path.name}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in LINK.findall(prose(text()))}
    assert DOCS and not [p.name for p in DOCS if p.resolve() not in linked]


def test_every_make_target_the_readme_names_exists():
    md = text()
    code = [line for block in FENCE.findall(md) for line in code_lines(block)] + SPAN.findall(prose(md))
    named = {t for c in code for t in MAKE.findall(c)}
    assert {"run", "test"} <= named
    missing = named - set(makefile_targets())
    assert not missing, f"make targets named in README.md but not in the Makefile: {sorted(missing)}"


def test_every_flag_of_a_command_in_the_readme_is_in_its_scripts_help():
    """A flag on a command line belongs to the script before it on that line (--help lists it)."""
    md = text()
    commands = [line for block in FENCE.findall(md) for line in code_lines(block)]
    commands += [" ".join(s.split()) for s in SPAN.findall(prose(md)) if SCRIPT.search(s)]
    wrong = []
    for command in commands:
        matches = list(SCRIPT.finditer(command))
        foreign = command[:matches[0].start()] if matches else command
        wrong += [(command, f) for f in FLAG.findall(foreign) if f not in FOREIGN_FLAGS]
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(command)
            script = m.group(1) or m.group(2)
            wrong += [(command, f) for f in FLAG.findall(command[m.end():end]) if f not in help_flags(script)]
    assert not wrong, wrong


def test_every_flag_in_the_text_exists():
    """In the sections on searching, a flag in the text is tune.py's; elsewhere, one of the scripts the README
    runs. Only the names are checked: what --help says about them is its own test's business."""
    md = text()
    parts = sections(prose(md))
    assert set(TUNE_SECTIONS) <= set(parts), sorted(parts)
    tune = help_flags("tune")
    union = frozenset().union(*(help_flags(s) for s in scripts_named(md))) | FOREIGN_FLAGS
    wrong = []
    for heading, body in parts.items():
        known = tune if heading in TUNE_SECTIONS else union
        for span in SPAN.findall(body):
            if SCRIPT.search(span):
                continue  # a command: the test above attributes its flags to its script
            wrong += [(heading, f) for f in FLAG.findall(span) if f not in known]
    assert not wrong, wrong
    assert {"--num-gpus", "--address", "--storage-path", "--preset", "--name", "--resume"} <= tune


# --- stale text -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_stale_sentences_are_gone(page):
    found = [s for s in STALE if s in page.read_text()]
    assert not found, found


def asha_rungs(max_t: int, grace: int, rf: int) -> list[int]:
    """Ray's ASHA rungs, lowest first (ray/tune/schedulers/async_hyperband.py, _Bracket with s = 0)."""
    return [grace * rf ** k for k in range(int(np.log(max_t / grace) / np.log(rf) + 1))]


def in_words(rungs: list[int]) -> str:
    return " and ".join([", ".join(map(str, rungs[:-1])), str(rungs[-1])] if len(rungs) > 1 else map(str, rungs))


def test_the_rungs_the_docs_give_are_ray_asha_s_for_each_preset():
    from distributed.config import PRESETS
    assert asha_rungs(30, 3, 3) == [3, 9, 27] and asha_rungs(6, 1, 3) == [1, 3]
    racing = (ROOT / "docs" / "racing.md").read_text()
    for name, cfg in PRESETS.items():
        t, s = cfg.train.epochs, cfg.search
        rungs = asha_rungs(t, s.grace_period, s.reduction_factor)
        row = f"| `{name}` | {t} | {s.grace_period} | {s.reduction_factor} | {in_words(rungs)} |"
        assert row in racing, row
    md = text()
    full, quick = PRESETS["full"], PRESETS["quick"]
    assert f"at epochs {in_words(asha_rungs(30, 3, 3))} in the full preset, 1 and 3 in the quick one" in md
    assert (full.train.epochs, full.search.grace_period, full.search.reduction_factor) == (30, 3, 3)
    assert (quick.train.epochs, quick.search.grace_period, quick.search.reduction_factor) == (6, 1, 3)
    assert f"{quick.search.num_samples} trials of up to {quick.train.epochs} epochs" in md
    assert f"{full.search.num_samples} trials of up to {full.train.epochs} epochs" in md


def test_the_seed_figure_is_explained_where_it_appears():
    for paragraph in text().split("\n\n"):
        if "91.97" in paragraph:
            assert "earlier single-machine project" in paragraph, paragraph
