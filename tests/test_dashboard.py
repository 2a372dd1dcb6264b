"""experiments/dashboard.py: Optuna's dashboard on a run's optuna.db.

On a real smoke search's study (the session's smoke_run), served on a loopback port: the dashboard's HTTP
API lists every trial with the state and intermediate values Optuna's own API reads from the same file, its
study pages render those in headless Chromium, its write endpoints are refused with a reason that says the
study is served read-only, and optuna.db stays
byte-for-byte as it was. The bad-input paths (exit code 2, one line on stderr) and Ctrl-C need no Ray."""
from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from analysis.browser import find_chromium
from conftest import ROOT, load_script

SCRIPT = ROOT / "experiments" / "dashboard.py"
URL_LINE = re.compile(r"^dashboard: (http://127\.0\.0\.1:(\d+)(/dashboard/\S*)) \(Ctrl-C to stop\)$")
STARTUP_S = 120  # importing optuna on a loaded 2-core machine can take tens of seconds


def start(run_dir: Path) -> tuple[subprocess.Popen, str]:
    """The CLI as a subprocess on a free loopback port (--port 0); returns it and the URL it printed."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "--port", "0"], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(STARTUP_S)
    if not lines or not lines[0]:
        stop(proc)
        pytest.fail(f"dashboard.py printed no URL in {STARTUP_S} s; stderr: {proc.stderr.read()[-2000:]}")
    return proc, lines[0].rstrip("\n")


def stop(proc: subprocess.Popen) -> int:
    """Ctrl-C (SIGINT), as a person stops it; killed if it does not end within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        assert r.status == 200 and r.headers.get_content_type() == "application/json"
        return json.load(r)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rendered_text(url: str) -> str:
    """The page's visible text after its JavaScript ran (the dashboard is a single-page app that fetches
    the study from the API): Chromium's DOM dump, tags stripped."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([find_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-extensions", "--disable-background-networking",
                              f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", out.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# --- bad input, and Ctrl-C: no Ray ----------------------------------------------------------------------

@pytest.fixture
def toy_run(tmp_path):
    """A run directory holding only an optuna.db: study 'toy', one COMPLETE and one PRUNED trial."""
    run_dir = tmp_path / "toy"
    run_dir.mkdir()
    study = optuna.create_study(study_name="toy", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        trial = study.ask()
        trial.report(0.5, 1)
        study.tell(trial, 0.25 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return run_dir


def run_main(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        load_script("dashboard").main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert captured.out == ""
    return e.value.code, captured.err.splitlines()


@pytest.mark.parametrize("case, expected", [
    ("missing", "{p}: no such directory"),
    ("file", "{p}: not a directory"),
    ("no_db", "{p}: no optuna.db"),
    ("empty_db", "{p}/optuna.db: not a readable Optuna study database"),
    ("not_sqlite", "{p}/optuna.db: not a readable Optuna study database"),
])
def test_bad_run_dir_is_one_line_and_exit_2(case, expected, tmp_path, capsys):
    p = tmp_path / case
    if case == "file":
        p.write_text("x")
    elif case != "missing":
        p.mkdir()
    if case == "empty_db":
        (p / "optuna.db").write_bytes(b"")
    elif case == "not_sqlite":
        (p / "optuna.db").write_text("not a database\n" * 100)
    before = sha256(p / "optuna.db") if (p / "optuna.db").exists() else None
    code, err = run_main([p], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"dashboard.py: error: {expected.format(p=p)}")
    if before is not None:  # read-only: not even an empty file becomes a database
        assert sha256(p / "optuna.db") == before


def test_port_in_use_is_one_line_and_exit_2(toy_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_main([toy_run, "--port", port], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"dashboard.py: error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in err[0]


def test_bad_port_flag_is_one_line_and_exit_2(toy_run, capsys):
    code, err = run_main([toy_run, "--port", "70000"], capsys)
    assert code == 2 and err == ["dashboard.py: error: argument --port: expected a port number from 0 to 65535 "
                                 "(0 = any free one), got '70000'"]


def test_without_the_extra_it_says_how_to_install_it(toy_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # what `import optuna_dashboard` fails on
    code, err = run_main([toy_run], capsys)
    assert code == 2 and err == ["dashboard.py: error: optuna-dashboard is not installed: "
                                 "pip install -e '.[dashboard]'"]


def test_real_entry_point_bad_input_has_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], cwd=ROOT,
                         capture_output=True, text=True, timeout=STARTUP_S)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"dashboard.py: error: {tmp_path / 'nope'}: no such directory; pass a run "
                                       f"directory written by experiments/tune.py (results/NAME)"]


def read_only_reason(run_dir: Path) -> str:
    return (f"this study is served read-only: edits are refused (start optuna-dashboard yourself on a copy of "
            f"{run_dir / 'optuna.db'} to edit)")


# what the dashboard's page sends for a note edit, a rename, a deletion, a trial's user attribute, a new study
EDITS = [("PUT", "/api/studies/1/note", {"version": 1, "body": "a note"}),
         ("PUT", "/api/studies/1/1/note", {"version": 1, "body": "a trial note"}),
         ("POST", "/api/studies/1/rename", {"study_name": "renamed"}),
         ("DELETE", "/api/studies/1", None),
         ("POST", "/api/trials/1/user-attrs", {"user_attrs": {"k": "v"}}),
         ("POST", "/api/studies", {"study_name": "new", "directions": ["maximize"]})]


def call(app, method: str, path: str, body=None) -> tuple[str, bytes]:
    """One request through a WSGI app, in this process: (status line, body)."""
    import io
    from wsgiref.util import setup_testing_defaults
    raw = b"" if body is None else json.dumps(body).encode()
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)}
    setup_testing_defaults(environ)
    status = []
    out = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], out


@pytest.mark.parametrize("method, path, body", EDITS, ids=[f"{m} {p}" for m, p, _ in EDITS])
def test_edits_are_refused_saying_the_study_is_read_only(toy_run, capfd, method, path, body):
    import optuna_dashboard
    dashboard = load_script("dashboard")
    before = sha256(toy_run / "optuna.db")
    storage, _ = dashboard.open_study(toy_run)
    app = dashboard.read_only(optuna_dashboard.wsgi(storage), toy_run / "optuna.db")
    try:
        status, out = call(app, method, path, body)
        assert status == "403 Forbidden"
        assert json.loads(out) == {"reason": read_only_reason(toy_run)}  # the page shows it as "Failed: ..."
        status, out = call(app, "GET", "/api/studies/1")  # reading still works
        assert status == "200 OK" and json.loads(out)["name"] == "toy"
    finally:
        storage.engine.dispose()
    assert capfd.readouterr().err == ""  # the app never ran the edit: no traceback
    assert sha256(toy_run / "optuna.db") == before


def test_url_line_serves_and_ctrl_c_stops_cleanly(toy_run):
    before = sha256(toy_run / "optuna.db")
    proc, line = start(toy_run)
    try:
        m = URL_LINE.match(line)
        assert m, line
        assert m.group(3) == "/dashboard/studies/1"  # the study named after the run directory
        base = f"http://127.0.0.1:{m.group(2)}"
        assert [s["study_name"] for s in get_json(f"{base}/api/studies")["study_summaries"]] == ["toy"]
        with urllib.request.urlopen(m.group(1), timeout=60) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        note = urllib.request.Request(f"{base}/api/studies/1/note", method="PUT", data=b'{"version": 1, "body": "x"}',
                                      headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:  # a note edit from the page, over HTTP
            urllib.request.urlopen(note, timeout=60)
        assert e.value.code == 403 and json.load(e.value) == {"reason": read_only_reason(toy_run)}
    finally:
        code = stop(proc)
    assert code == 130
    assert proc.stdout.read() == "" and proc.stderr.read() == ""  # no traceback, no line per request
    assert sha256(toy_run / "optuna.db") == before


# --- a real smoke search's study ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(smoke_run):
    """The dashboard on the smoke run, for this module's tests; (run_dir, study, base URL, printed URL,
    optuna.db's sha256 before it started). Stopped with Ctrl-C at the end."""
    run_dir, code = smoke_run
    assert code == 0
    db = run_dir / "optuna.db"
    before = sha256(db)
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")
    proc, line = start(run_dir)
    m = URL_LINE.match(line)
    try:
        assert m, line
        yield run_dir, study, f"http://127.0.0.1:{m.group(2)}", m.group(1), before
    finally:
        assert stop(proc) == 130


@pytest.mark.ray
def test_api_lists_every_trial_with_optunas_state_and_intermediate_values(served):
    run_dir, study, base, url, _ = served
    sid = study._study_id
    assert url == f"{base}/dashboard/studies/{sid}"
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    assert [(s["study_id"], s["study_name"]) for s in summaries] == [(sid, "smoke")]
    detail = get_json(f"{base}/api/studies/{sid}")
    assert detail["name"] == "smoke" and detail["directions"] == ["maximize"]
    trials = study.get_trials(deepcopy=False)
    assert len(detail["trials"]) == len(trials) == 4
    states = {t.state for t in trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert optuna.trial.TrialState.COMPLETE in states
    for got, want in zip(sorted(detail["trials"], key=lambda t: t["number"]), trials):
        assert got["number"] == want.number and got["trial_id"] == want._trial_id
        assert got["state"].upper() == want.state.name  # "Complete" / "Pruned"
        assert {v["step"]: v["value"] for v in got["intermediate_values"]} == want.intermediate_values
        assert want.intermediate_values  # every trial reported at least its first epoch
        assert got.get("values") == want.values
    assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]


@pytest.mark.ray
@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_study_pages_render_in_headless_chromium(served):
    _, study, _, url, _ = served
    trials = study.get_trials(deepcopy=False)
    text = rendered_text(url)  # the URL the CLI printed: the study's history page
    assert f"smoke (id={study._study_id})" in text, text[:2000]
    assert "History" in text, text[:2000]
    text = rendered_text(f"{url}/trials")  # the trial list: every trial, with its state
    assert f"{len(trials)} Trials" in text, text[:2000]
    for t in trials:
        assert f"Trial {t.number} {t.state.name.capitalize()}" in text, text[:2000]


@pytest.mark.ray
def test_writes_are_refused_and_optuna_db_is_untouched(served):
    run_dir, study, base, _, before = served
    sid = study._study_id
    delete = urllib.request.Request(f"{base}/api/studies/{sid}", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as e:  # refused before the app runs (and the database is read-only)
        urllib.request.urlopen(delete, timeout=60)
    assert e.value.code == 403 and json.load(e.value) == {"reason": read_only_reason(run_dir)}
    assert [s["study_name"] for s in get_json(f"{base}/api/studies")["study_summaries"]] == ["smoke"]
    assert sha256(run_dir / "optuna.db") == before
    assert len(optuna.load_study(study_name="smoke", storage=f"sqlite:///{run_dir / 'optuna.db'}").trials) == 4
