"""Where a run is stored: a local or shared directory, or an object store (s3://, gs://).

Fold workers on every node write checkpoints into RUN_DIR/folds and the driver reads them back, so a
multi-node search needs a --storage-path that all nodes see: a shared directory (NFS, EFS) or a bucket.
A node-local path would "work" until the report or a resume found half the checkpoints missing: refuse it
up front.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from distributed.config import ConfigError


SHARED_STORAGE_HINT = ("a multi-node search needs a directory every node mounts (NFS/EFS, see cluster.yaml) "
                       "or a bucket (s3://, gs://)")


def storage_problem(path: str, visible: dict[str, bool]) -> str | None:
    """The error message for a probe result {node id: saw the probe file}, or None when every node saw it."""
    blind = sorted(node for node, seen in visible.items() if not seen)
    if not blind:
        return None
    return (f"--storage-path {path}: not shared by all {len(visible)} nodes of the Ray cluster "
            f"(not visible on node(s) {', '.join(n[:12] for n in blind)}); {SHARED_STORAGE_HINT}")


def _probe(path: str) -> bool:
    return os.path.exists(path)


def run_dir_visible(run_root: str) -> bool:
    """Does this node see the run directory? Its config.json is written before any slot starts. A bucket's
    run is the same run from every node (its config.json stays in the driver's working copy until uploaded)."""
    return parse_storage_uri(run_root) is not None or os.path.isfile(os.path.join(run_root, "config.json"))


def blind_node_problem(run_root: str, node: dict, slot: int, fold: int) -> str:
    """The one-line error for a fold worker whose node cannot see the run directory."""
    return (f"--storage-path {os.path.dirname(run_root)}: the run directory {run_root} is not visible on node "
            f"{node['node_ip']} ({node['node_id'][:12]}), where fold worker {fold} of slot {slot} started; "
            f"{SHARED_STORAGE_HINT}")


def check_shared_storage(storage_path: str) -> int:
    """Write a probe file under storage_path and look for it from every alive node. Returns the node count."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2 or parse_storage_uri(storage_path):  # a bucket is the same bucket from every node
        return len(nodes)
    root = Path(storage_path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".storage-probe-{uuid.uuid4().hex}"
    probe.write_text("probe\n")
    try:
        remote = ray.remote(num_cpus=0)(_probe)
        refs = {n: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(str(probe))
                for n in nodes}
        visible = {n: ray.get(r, timeout=120) for n, r in refs.items()}
    finally:
        probe.unlink(missing_ok=True)
    problem = storage_problem(storage_path, visible)
    if problem:
        raise ConfigError(problem)
    return len(nodes)


# ---------------------------------------------------------------- object storage (s3://, gs://)
#
# With --storage-path s3://BUCKET/PREFIX (or gs://), the nodes write what they make straight to the bucket:
# fold checkpoints (Ray Train) to URI/NAME/folds and the Tune experiment to URI/NAME/tune. The driver's own
# files (config.json, the tables, summary.json, optuna.db: SQLite needs a local file) live in a local
# working copy, results/NAME, and are uploaded to URI/NAME after every finished trial and at the end.
# A resume on a machine without the working copy downloads it first; report.py downloads what it reads.

REMOTE_SCHEMES = {"s3": "S3", "gs": "Google Cloud Storage", "gcs": "Google Cloud Storage"}
DRIVER_FILES = ("config.json", "summary.json", "trials.parquet", "epochs.parquet", "rungs.parquet", "optuna.db")
LOCAL_ROOT = "results"  # parent of the driver's working copy of a run stored in a bucket


@dataclass(frozen=True)
class RemoteStore:
    """A parsed object-storage URI: s3://bucket/prefix -> scheme "s3", bucket "bucket", prefix "prefix"."""
    scheme: str
    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def run_uri(self, name: str, *parts: str) -> str:
        return "/".join((self.uri, name, *parts))

    def fs_path(self, name: str, *parts: str) -> str:
        """The same location as pyarrow's filesystem (and Ray's checkpoint paths) name it: bucket/prefix/..."""
        return "/".join(p for p in (self.bucket, self.prefix, name, *parts) if p)


def parse_storage_uri(text: str, flag: str = "--storage-path") -> RemoteStore | None:
    """None for a local path; a RemoteStore for s3:// and gs:// URIs; ConfigError (naming `flag`) for any other URI."""
    if "://" not in text:
        return None
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(f"{flag} {text}: unsupported scheme '{scheme}://'; use a local or shared "
                          f"directory, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    if "?" in rest or "#" in rest:
        raise ConfigError(f"{flag} {text}: no query options in the URI; set the region, endpoint and "
                          f"credentials in the environment (AWS_REGION, AWS_ENDPOINT_URL, ...) instead")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{flag} {text}: no bucket; write {scheme}://BUCKET/PREFIX")
    prefix = "/".join(p for p in prefix.split("/") if p)
    if any(p in (".", "..") for p in prefix.split("/")):
        raise ConfigError(f"{flag} {text}: '.' and '..' are not allowed in an object-storage prefix")
    return RemoteStore(scheme, bucket, prefix)


@dataclass(frozen=True)
class RunLocation:
    """Where a run is stored, parsed once (prepare_run) and handed to the engine.

    local_dir: the driver's run directory, STORAGE_PATH/NAME, or its working copy results/NAME for a run in a
    bucket (as given: relative paths stay relative in messages; run_search resolves it). store: the bucket,
    or None. The nodes write to `root`, Tune's experiment lives under `parent`. It reads as a path to
    local_dir (str, os.fspath), so code that took the run directory takes a RunLocation.
    """
    name: str
    storage_path: str
    local_dir: Path
    store: RemoteStore | None

    @classmethod
    def of(cls, storage_path: str, name: str) -> "RunLocation":
        """STORAGE_PATH/NAME (a local or shared directory, or a bucket): ConfigError for a URI not supported."""
        store = parse_storage_uri(storage_path)
        return cls(name, storage_path, Path(LOCAL_ROOT if store else storage_path) / name, store)

    def resolved(self) -> "RunLocation":
        """The same run with an absolute local_dir (Ray's storage layer takes absolute paths or URIs only)."""
        return replace(self, local_dir=self.local_dir.resolve())

    @property
    def parent(self) -> str:
        """Where the run's directory is, as Tune's storage_path: the bucket's URI, or the local parent."""
        return self.store.uri if self.store else str(self.local_dir.resolve().parent)

    @property
    def root(self) -> str:
        """Where the nodes write fold checkpoints and the Tune experiment: URI/NAME, or the local directory."""
        return f"{self.parent}/{self.local_dir.name}"

    @property
    def remote_root(self) -> str | None:
        """The run in its bucket as pyarrow and Ray's checkpoint paths name it (bucket/prefix/NAME), or None."""
        return self.store.fs_path(self.name) if self.store else None

    def upload(self, files=None) -> list[str]:
        """Copy the driver's files (DRIVER_FILES, or `files`) to the bucket; nothing for a local run."""
        if self.store is None:
            return []
        return upload(self.local_dir, self.store, self.name, DRIVER_FILES if files is None else files)

    def download(self, *parts: str) -> int:
        """Copy URI/NAME/<parts...> into local_dir; 0 for a local run."""
        return download(self.store, self.name, self.local_dir, *parts) if self.store else 0

    def __fspath__(self) -> str:
        return str(self.local_dir)

    def __str__(self) -> str:
        return str(self.local_dir)


def open_store(store: RemoteStore):
    """pyarrow's filesystem for the store (credentials and region come from the environment)."""
    import pyarrow.fs
    try:
        fs, _ = pyarrow.fs.FileSystem.from_uri(store.uri)
    except Exception as e:  # pyarrow raises OSError / ArrowInvalid with the SDK's message
        raise ConfigError(f"{store.uri}: cannot open {REMOTE_SCHEMES[store.scheme]} "
                          f"({_first_line(e)})") from None
    return fs


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def remote_run_exists(store: RemoteStore, name: str) -> bool:
    """Does URI/NAME hold anything? Also the reachability check: ConfigError if the bucket can't be read."""
    import pyarrow.fs
    fs = open_store(store)
    try:
        if fs.get_file_info(store.bucket).type == pyarrow.fs.FileType.NotFound:
            raise ConfigError(f"{store.uri}: bucket '{store.bucket}' does not exist (or these "
                              f"credentials cannot see it); create it first")
        if fs.get_file_info(store.fs_path(name, "config.json")).type != pyarrow.fs.FileType.NotFound:
            return True
        listing = fs.get_file_info(pyarrow.fs.FileSelector(store.fs_path(name), allow_not_found=True))
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{store.uri}: cannot read {store.run_uri(name)} "
                          f"({_first_line(e)})") from None
    return bool(listing)


def path_exists(path: str) -> bool:
    """os.path.exists for a local path, or for a URI (s3://bucket/key) through pyarrow."""
    store = parse_storage_uri(path)
    if store is None:
        return os.path.exists(path)
    import pyarrow.fs
    return open_store(store).get_file_info(store.fs_path("")).type != pyarrow.fs.FileType.NotFound


def upload(local_dir: Path, store: RemoteStore, name: str, files=DRIVER_FILES) -> list[str]:
    """Copy local_dir/<file> for each of `files` that exists to URI/NAME/<file>. Returns the names copied.

    An object store writes each object whole, so a reader of the bucket never sees half a file either.
    """
    import pyarrow.fs
    fs = open_store(store)
    copied = []
    for f in files:
        src = Path(local_dir) / f
        if src.is_file():
            pyarrow.fs.copy_files(str(src.resolve()), store.fs_path(name, f), destination_filesystem=fs)
            copied.append(f)
    return copied


def download(store: RemoteStore, name: str, local_dir: Path, *parts: str) -> int:
    """Copy URI/NAME/<parts...> (a file or a directory tree) to local_dir/<parts...>. Returns files copied."""
    import pyarrow.fs
    fs = open_store(store)
    src = store.fs_path(name, *parts)
    info = fs.get_file_info(src)
    if info.type == pyarrow.fs.FileType.NotFound:
        return 0
    dest = Path(local_dir).joinpath(*parts)
    if info.type == pyarrow.fs.FileType.File:
        dest.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(src, str(dest.resolve()), source_filesystem=fs)
        return 1
    files = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(src, recursive=True))
             if i.type == pyarrow.fs.FileType.File]
    for i in files:  # one by one: copy_files of a whole prefix skips the local parent directories it needs
        target = dest / posixpath.relpath(i.path, src)
        target.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(i.path, str(target.resolve()), source_filesystem=fs)
    return len(files)


def download_driver_files(store: RemoteStore, name: str, local_dir: Path) -> int:
    """The driver's files of URI/NAME (config.json, tables, summary.json, optuna.db) into local_dir."""
    return sum(download(store, name, local_dir, f) for f in DRIVER_FILES)


def fetch_run(target: str) -> Path:
    """report.py's RUN_DIR argument as a local run directory.

    A local path is returned as it is. For s3://BUCKET/PREFIX/NAME the driver's files are downloaded into
    the local working copy results/NAME (made if missing; one that belongs to another run is refused), and
    the fold checkpoints the report reads follow with fetch_checkpoint.
    """
    store = parse_storage_uri(target, flag="run directory")
    if store is None:
        return Path(target)
    if not store.prefix:
        raise ConfigError(f"{target}: name a run, s3://BUCKET/PREFIX/NAME, not a bucket")
    parent_prefix, _, name = store.prefix.rpartition("/")
    parent = RemoteStore(store.scheme, store.bucket, parent_prefix)
    local = RunLocation.of(parent.uri, name).local_dir
    if (local / "config.json").is_file():
        import json
        stored = json.loads((local / "config.json").read_text()).get("storage_path")
        if parse_storage_uri(stored or "") != parent:
            raise ConfigError(f"{target}: the local copy {local} belongs to another run (storage_path "
                              f"{stored}); move it away, or run report.py from another directory")
    elif local.exists():
        raise ConfigError(f"{target}: {local} exists and is not a run directory; move it away first")
    if not remote_run_exists(parent, name):
        raise ConfigError(f"{target}: no such run in the bucket")
    n = download_driver_files(parent, name, local)
    print(f"fetched {n} file(s) of {target} into {local}", flush=True)
    return local


def fetch_checkpoint(run_dir: Path, storage_path: str, name: str, relative: str | None) -> int:
    """Download RUN_DIR/<relative> (a fold checkpoint directory) from the bucket when the run is stored in one
    and the directory is not here yet. Returns the files copied (0 for local runs)."""
    where = RunLocation.of(storage_path, name)
    if where.store is None or not relative or (Path(run_dir) / relative).is_dir():
        return 0
    return download(where.store, name, run_dir, *relative.split("/"))


# ---------------------------------------------------------------- files written by the fold workers
#
# The fold workers write folds/<trial>/epoch_NNN/fold_k.pt themselves (not through Ray Train's checkpoint
# bookkeeping, which counts across a slot's whole Train run and would delete another trial's checkpoints).
# `path` is a local absolute path or a URI (s3://bucket/key); an object store writes each object whole.

def filesystem(path: str):
    """(None, path) for a local path; (pyarrow filesystem, bucket/key) for a URI (s3://bucket/key)."""
    store = parse_storage_uri(path)
    if store is None:
        return None, path
    return open_store(store), store.fs_path("")


def write_file(path: str, data: bytes) -> None:
    fs, p = filesystem(path)
    if fs is None:
        from distributed.files import write_bytes_atomic
        write_bytes_atomic(p, data)
        return
    with fs.open_output_stream(p) as f:
        f.write(data)


def read_file(path: str) -> bytes:
    fs, p = filesystem(path)
    if fs is None:
        return Path(p).read_bytes()
    with fs.open_input_stream(p) as f:
        return f.read()


def list_dir(path: str) -> list[str]:
    """Names directly under `path` (files and directories); [] when it does not exist."""
    fs, p = filesystem(path)
    if fs is None:
        return sorted(os.listdir(p)) if os.path.isdir(p) else []
    import pyarrow.fs
    infos = fs.get_file_info(pyarrow.fs.FileSelector(p, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in infos)


def remove_file(path: str) -> None:
    """Delete a file; for a local one, also its directory once it is empty (the last fold out removes it)."""
    fs, p = filesystem(path)
    if fs is not None:
        fs.delete_file(p)
        return
    Path(p).unlink(missing_ok=True)
    try:
        os.rmdir(os.path.dirname(p))
    except OSError:  # other folds' files are still there
        pass
