"""Serve Optuna's dashboard (optuna-dashboard) on a run's study, RUN_DIR/optuna.db, and print its URL.

    python experiments/dashboard.py results/quick
    python experiments/dashboard.py results/full --port 8081
    make dashboard RUN=quick

It listens on 127.0.0.1 (only this machine; from elsewhere, forward the port: ssh -L 8080:127.0.0.1:8080
HOST) and serves until Ctrl-C. The study is opened read-only (SQLite's mode=ro), so the file is never
written, even while a search is still adding trials to it (the dashboard shows those as they come); the
dashboard's own edits (notes, renames, deleting a study) are refused with HTTP 403 and a reason the page shows
(READ_ONLY). Needs the extra:
pip install -e '.[dashboard]' (make dashboard installs it).

Exit codes: 0 or 130 stopped with Ctrl-C; 2 bad input (one line on stderr, before anything is served).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distributed.cli import ArgumentParser, fail  # noqa: E402
from distributed.config import EXIT_INTERRUPTED, EXIT_OK, ConfigError  # noqa: E402


READ_ONLY = ("this study is served read-only: edits are refused (start optuna-dashboard yourself on a copy of "
             "{db} to edit)")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # optuna-dashboard changes the study only by POST, PUT and DELETE


def read_only(app, db: Path):
    """The dashboard's WSGI app with every other method refused before it runs: 403 and {"reason": READ_ONLY},
    which the page shows as "Failed: ...". Without this, the app tries the write and the read-only SQLite
    connection fails it with a bare 500 "internal server error" and a traceback on stderr, or, for a note, a
    409 "The text you are editing has changed": neither says why."""
    body = json.dumps({"reason": READ_ONLY.format(db=db)}).encode()

    def wrapped(environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") in SAFE_METHODS:
            return app(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        left = int(length) if length.isdigit() else 0
        while left > 0:  # read the request body first: a client still sending would get a reset, not this answer
            chunk = environ["wsgi.input"].read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    return wrapped


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the page polls the API; Ctrl-C must not wait for a request in flight


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no line per request: the URL line is the output
        pass


def port_arg(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535 (0 = any free one), got '{text}'")
    return int(text)


def open_study(run_dir: Path):
    """(read-only RDBStorage, dashboard path of the run's study). Raises ConfigError."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: {'not a directory' if run_dir.exists() else 'no such directory'}; "
                          f"pass a run directory written by experiments/tune.py (results/NAME)")
    db = run_dir / "optuna.db"
    if not db.is_file():
        raise ConfigError(f"{run_dir}: no optuna.db (not a run directory of experiments/tune.py, "
                          f"or its search has not started)")
    try:
        import optuna
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed: pip install -e '.[dashboard]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uri = db.resolve().as_uri() + "?mode=ro"  # every connection read-only: nothing can write optuna.db
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}", engine_kwargs={
            "creator": lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)})
        studies = {s.study_name: s._study_id for s in storage.get_all_studies()}
    except Exception as e:  # an empty or foreign file, another schema version
        raise ConfigError(f"{db}: not a readable Optuna study database ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not studies:
        raise ConfigError(f"{db}: holds no Optuna study")
    # The study is named after the run, and the run directory too (STORAGE_PATH/NAME).
    study_id = studies.get(run_dir.resolve().name, next(iter(studies.values())) if len(studies) == 1 else None)
    return storage, "/dashboard/" if study_id is None else f"/dashboard/studies/{study_id}"


def main(argv=None) -> int:
    parser = ArgumentParser(prog="dashboard.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory written by experiments/tune.py (results/NAME)")
    parser.add_argument("--port", type=port_arg, default=8080,
                        help="port to listen on (default 8080; 0 = any free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; the dashboard has no login)")
    args = parser.parse_args(argv)

    try:
        storage, path = open_study(Path(args.run_dir))
        import optuna_dashboard
        try:
            app = read_only(optuna_dashboard.wsgi(storage), Path(args.run_dir) / "optuna.db")
            server = make_server(args.host, args.port, app,
                                 server_class=_Server, handler_class=_QuietHandler)
        except OSError as e:  # the port in use, a privileged port, an address not of this machine
            raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    except ConfigError as e:
        fail(f"dashboard.py: error: {e}")

    # Ctrl-C stops it even where SIGINT came in ignored (a background job of a script), as it stops tune.py.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"dashboard: http://{args.host}:{server.server_port}{path} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        server.server_close()
        storage.engine.dispose()
    return EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while it starts (importing optuna takes seconds): no traceback
        sys.exit(EXIT_INTERRUPTED)
