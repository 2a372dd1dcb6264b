"""distributed/files.py: atomic writes leave whole files with ordinary permissions and no temp files."""
import json
import os

import numpy as np

from distributed.files import write_json_atomic


def test_atomic_json_write_replaces_the_file_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "summary.json"
        write_json_atomic(path, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3)})
        write_json_atomic(path, {"a": 4})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"a": 4}
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # readable by others, as open() would make it
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left behind
