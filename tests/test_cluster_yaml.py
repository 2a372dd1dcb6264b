"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own JSON schema) and matches what the README says."""
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def validate(config):
    """What `ray up` does first: fill the provider's defaults, then check against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(copy.deepcopy(config)))


def test_validates_against_rays_schema(cluster):
    validate(cluster)


@pytest.mark.parametrize("breakage", ["unknown_key", "no_resources"])
def test_schema_check_catches_a_broken_config(cluster, breakage):
    broken = copy.deepcopy(cluster)
    if breakage == "unknown_key":
        broken["available_node_types"]["gpu_worker"]["gpus"] = 4
    else:
        del broken["available_node_types"]["head"]["resources"]
    with pytest.raises((ValueError, RuntimeError, jsonschema.ValidationError)):
        validate(broken)


def test_gpu_workers_head_and_install(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith("g5.")
    assert types["gpu_worker"]["max_workers"] >= 1 and types["gpu_worker"]["min_workers"] == 0
    setup = "\n".join(cluster["setup_commands"])
    assert "pip install -q -e ~/fashion-mnist-tune" in setup and "dataset-fashion-mnist" in setup
    assert "/mnt/shared" in setup  # the shared storage every node writes checkpoints to
    assert "/home/ubuntu/fashion-mnist-tune" in cluster["file_mounts"]


# --- what `ray up` runs on the nodes (issue 15, items 3, 4, 9, 10) ----------------------------------------

def requires_python():
    import tomllib
    from packaging.specifiers import SpecifierSet
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return SpecifierSet(project["requires-python"]), project


PYTHONS = [f"3.{minor}.{patch}" for minor in range(8, 16) for patch in range(13)]


def test_requires_python_is_what_the_pinned_packages_need():
    """Every Python that pyproject admits is admitted by each pinned package's own Requires-Python (the
    installed metadata), and 3.10, the Ubuntu 22.04 AMI's python3, is not admitted."""
    import importlib.metadata
    import re
    from packaging.specifiers import SpecifierSet
    spec, project = requires_python()
    pins = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    checked = {}
    for pin in pins:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", pin.split("#")[0].strip()).groups()
        meta = importlib.metadata.metadata(name)
        assert meta["Version"] == version, f"{name}: {meta['Version']} installed, {version} pinned"
        needs = SpecifierSet(meta.get("Requires-Python") or "")
        checked[name] = str(needs)
        too_old = [v for v in PYTHONS if spec.contains(v) and not needs.contains(v)]
        assert not too_old, f"requires-python {spec} admits {too_old[:3]}, which {name}=={version} refuses ({needs})"
    for name in ("numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "pyarrow"):
        assert not SpecifierSet(checked[name]).contains("3.10.12"), (name, checked[name])  # why it is 3.11
    assert not spec.contains("3.10.12") and spec.contains("3.11.0") and spec.contains("3.12.3")


def test_setup_builds_the_venv_with_a_python_that_requires_python_admits(cluster):
    import re
    spec, _ = requires_python()
    setup = cluster["setup_commands"]
    venv = [c for c in setup if re.search(r"-m venv ~/venv\b", c)]
    assert len(venv) == 1, venv
    python, = re.findall(r"(python3\.\d+) -m venv ~/venv", venv[0])  # an explicit version, not the AMI's python3
    assert spec.contains(python.removeprefix("python") + ".0")
    # the same interpreter is installed before the venv is made, with its venv module (a separate Debian package)
    install = "\n".join(setup[:setup.index(venv[0])])
    assert re.search(rf"apt-get install[^\n]* {re.escape(python)} {re.escape(python)}-venv", install)
    # a venv from an older setup, with another Python, is rebuilt rather than reused
    assert venv[0].startswith(f"[ -x ~/venv/bin/{python} ] ||") and "rm -rf ~/venv" in venv[0]
    after = "\n".join(setup[setup.index(venv[0]) + 1:])
    assert "~/venv/bin/pip install -q -e ~/fashion-mnist-tune" in after and " python3 " not in after
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("~/venv/bin/ray start" in c for c in starts if "ray start" in c)


def test_every_setup_command_is_valid_bash(cluster):
    import subprocess
    commands = cluster["setup_commands"] + cluster["head_setup_commands"] + cluster["worker_setup_commands"]
    for command in commands:
        assert isinstance(command, str), command  # a stray ": " makes YAML read a command as a mapping
        out = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert out.returncode == 0, (command, out.stderr)


def test_head_installs_boto3_for_the_aws_node_provider(cluster):
    """Ray's AWS node provider imports boto3 on the head (the autoscaler); the head installs the project's aws
    extra, which pins it."""
    _, project = requires_python()
    assert [d for d in project["optional-dependencies"]["aws"] if d.startswith("boto3==")]
    head = "\n".join(cluster["head_setup_commands"])
    assert '~/venv/bin/pip install -q -e "$HOME/fashion-mnist-tune[aws]"' in head
    assert "boto3" not in "\n".join(cluster["worker_setup_commands"])  # workers do not launch nodes


def test_rsync_copies_the_sources_only(cluster):
    assert cluster["rsync_filter"] == [".gitignore"]
    assert "**/.git" in cluster["rsync_exclude"] and "**/.git/**" in cluster["rsync_exclude"]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {".venv/", "results/", "*.pt", "*.db"} <= set(ignored)  # what the filter keeps off the nodes
    from ray.autoscaler._private.command_runner import SSHCommandRunner
    args = SSHCommandRunner._create_rsync_filter_args(None, {k: cluster[k] for k in ("rsync_exclude", "rsync_filter")})
    assert args == ["--exclude", "**/.git", "--exclude", "**/.git/**", "--filter", "dir-merge,- .gitignore"]


SG_PLACEHOLDER = "sg-0123456789abcdef0"


def test_one_pre_created_security_group_for_both_node_types_and_efs(cluster):
    """Ray creates no security group when every node type names one; the same group goes on the EFS mount
    targets, so NFS from the nodes is allowed before `ray up` runs."""
    for name, node_type in cluster["available_node_types"].items():
        assert node_type["node_config"]["SecurityGroupIds"] == [SG_PLACEHOLDER], name
    from ray.autoscaler._private.aws.config import _configure_security_group
    config = copy.deepcopy(cluster)
    assert _configure_security_group(config) == cluster  # Ray's own step: returns before any AWS call, no new group
    text = (ROOT / "cluster.yaml").read_text()
    assert "aws efs create-mount-target" in text and "--security-groups $SG" in text
    assert "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$SG}]" in text  # all traffic within the group: Ray, NFS
    readme = (ROOT / "README.md").read_text()
    assert SG_PLACEHOLDER in readme and "create-mount-target" in readme


# --- Ray's token authentication on every node (test_token_auth.py runs the flow on a real local head) --------

def test_the_head_makes_the_token_and_its_autoscaler_copies_it_to_every_worker(cluster, tmp_path, monkeypatch):
    """The token lives on the head (made at its setup, Ray's default path), every `ray start` runs in token mode,
    and Ray's own node updater, as the head's autoscaler builds it for a new worker, copies the head's token file
    to the same path on the worker before the worker's setup and start."""
    from ray.autoscaler._private.updater import NodeUpdater
    from ray.autoscaler._private.util import prepare_config
    assert any(c.endswith("ray get-auth-token --generate > /dev/null") for c in cluster["head_setup_commands"])
    assert not any("get-auth-token" in c for c in cluster["setup_commands"] + cluster["worker_setup_commands"])
    starts = [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("export RAY_AUTH_MODE=token;") for c in starts)
    synced = prepare_config(copy.deepcopy(cluster))["cluster_synced_files"]
    assert synced == ["~/.ray/auth_token"]

    monkeypatch.setenv("HOME", str(tmp_path))  # the head's home; never this machine's ~/.ray
    from ray._private.authentication.authentication_token_setup import _get_default_token_path
    token = _get_default_token_path()  # where `ray get-auth-token --generate` writes it
    assert token == tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("t" * 32)

    class Runner:  # the worker's shell, as the head's SSH runner would reach it
        def run(self, cmd, **kwargs):
            pass

    class Provider:
        def get_command_runner(self, *args):
            return Runner()

    updater = NodeUpdater("worker-1", {"type": "aws"}, Provider(), cluster["auth"], cluster["cluster_name"],
                          file_mounts={}, initialization_commands=[], setup_commands=[], ray_start_commands=[],
                          runtime_hash="", file_mounts_contents_hash="", is_head_node=False,
                          cluster_synced_files=synced)
    copied = []
    updater.sync_file_mounts(lambda src, dst, **kwargs: copied.append((src, dst)))
    assert copied == [(str(token), str(token))]  # head's ~/.ray/auth_token -> worker's ~/.ray/auth_token

    # the README fetches the same file from the head (ssh_user's home) for the machine that submits jobs
    readme = (ROOT / "README.md").read_text()
    fetch = f"ray rsync-down cluster.yaml /home/{cluster['auth']['ssh_user']}/.ray/auth_token"
    assert fetch in readme and fetch in (ROOT / "cluster.yaml").read_text()
