"""The pool file: locations, validation messages, ~/.ssh/config aliases, controller slots."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from remote._link import HostSpec
from remote._pool_config import (
    PoolConfigError,
    default_pool_path,
    embedded_pool,
    is_controller_host,
    load_pool,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pool.example.toml"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARALLELIZE_POOL_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(tmp_path: Path, text: str, name: str = "pool.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_file(tmp_path: Path) -> None:
    key = tmp_path / "id_test"
    key.write_text("not checked here")
    path = write(
        tmp_path,
        f"""
[defaults]
user = "alice"
python = "python3"
slots = 2
strict_host_key_checking = false
connect_timeout = 3.5

[hosts.gpu1]
host = "10.0.0.5"
user = "bob"
port = 2222
slots = 4
weight = 2.5
python = "/opt/py/bin/python3"
identity_file = "{key}"
gateway = "carol@bastion:22"

[hosts.worker-2]
""",
    )
    config = load_pool(path)
    assert config is not None
    assert config.connect_timeout == 3.5
    assert config.strict_host_key_checking is False
    assert config.path == str(path)
    gpu1, worker2 = config.hosts
    assert gpu1 == HostSpec(
        name="gpu1",
        host="10.0.0.5",
        user="bob",
        port=2222,
        slots=4,
        weight=2.5,
        python="/opt/py/bin/python3",
        identity_file=str(key),
        gateway="carol@bastion:22",
        strict_host_key_checking=False,
    )
    assert worker2 == HostSpec(
        name="worker-2", host="worker-2", user="alice", slots=2, strict_host_key_checking=False
    )


def test_example_file_is_valid(tmp_path: Path) -> None:
    home = Path(os.environ["HOME"]) / ".ssh"
    home.mkdir(parents=True)
    (home / "id_ed25519").write_text("dummy")
    config = load_pool(EXAMPLE)
    assert config is not None
    names = [h.name for h in config.hosts]
    assert names == ["gpu1", "build-box", "workstation"]
    assert config.hosts[2].slots == 4  # the controller keeps half


@pytest.mark.parametrize(
    ("snippet", "field", "expected"),
    [
        ("slots = 0", "slots", "must be between 1 and"),
        ('slots = "4"', "slots", "must be an integer"),
        ("slots = 2.5", "slots", "must be an integer"),
        ("slots = true", "slots", "must be an integer"),
        ("weight = 0", "weight", "finite number > 0"),
        ("weight = -1.5", "weight", "finite number > 0"),
        ('weight = "x"', "weight", "must be a number"),
        ("port = 0", "port", "between 1 and 65535"),
        ("port = 70000", "port", "between 1 and 65535"),
        ('host = "bad host;rm -rf /"', "host", "not a valid host name"),
        ('host = ""', "host", "non-empty string"),
        ('user = "x y"', "user", "not a valid user name"),
        ('user = "$(id)"', "user", "not a valid user name"),
        ('python = "python3; rm -rf ~"', "python", "not a plain command name"),
        ('python = "python3 -X dev"', "python", "not a plain command name"),
        ('python = "-c"', "python", "not a plain command name"),
        ('identity_file = "/nonexistent/key"', "identity_file", "does not exist"),
        ('gateway = "bastion:port"', "gateway", "[user@]host[:port]"),
        ('gateway = "a b@bastion"', "gateway", "[user@]host[:port]"),
        ('strict_host_key_checking = "yes"', "strict_host_key_checking", "true or false"),
        ('controller = "no"', "controller", "true or false"),
    ],
)
def test_invalid_field(tmp_path: Path, snippet: str, field: str, expected: str) -> None:
    path = write(tmp_path, f"[hosts.node1]\n{snippet}\n")
    with pytest.raises(PoolConfigError) as info:
        load_pool(path)
    message = str(info.value)
    assert str(path) in message
    assert "[hosts.node1]" in message
    assert f"field {field!r}" in message
    assert expected in message
    assert "Fix:" in message
    assert (info.value.path, info.value.entry, info.value.field) == (
        str(path),
        "hosts.node1",
        field,
    )


def test_invalid_defaults_field(tmp_path: Path) -> None:
    path = write(tmp_path, "[defaults]\nconnect_timeout = -1\n[hosts.a]\n")
    with pytest.raises(PoolConfigError, match=r"\[defaults\] field 'connect_timeout'"):
        load_pool(path)


@pytest.mark.parametrize(
    ("text", "entry", "suggestion"),
    [
        ("[hosts.a]\nslot = 2\n", "[hosts.a] field 'slot'", "did you mean 'slots'?"),
        ("[hosts.a]\nhostname = 'x'\n", "[hosts.a] field 'hostname'", "did you mean 'host'?"),
        ("[defaults]\npyhton = 'x'\n[hosts.a]\n", "[defaults] field 'pyhton'", "'python'"),
        ("[host.a]\n", "[top level] field 'host'", "did you mean 'hosts'?"),
        ("[hosts.a]\nfoo = 1\n", "[hosts.a] field 'foo'", "allowed: host, user"),
    ],
)
def test_unknown_key_with_suggestion(
    tmp_path: Path, text: str, entry: str, suggestion: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PoolConfigError) as info:
        load_pool(path)
    assert entry in str(info.value) and "unknown key" in str(info.value)
    assert suggestion in str(info.value)


def test_no_hosts_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(PoolConfigError, match="defines no hosts"):
        load_pool(write(tmp_path, "[defaults]\nslots = 2\n"))
    with pytest.raises(PoolConfigError, match="not valid TOML"):
        load_pool(write(tmp_path, "[hosts.a\n", "broken.toml"))
    with pytest.raises(PoolConfigError, match="not a valid host entry name"):
        load_pool(write(tmp_path, '[hosts."a b"]\n', "name.toml"))


def test_missing_explicit_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PoolConfigError, match=r"nope\.toml .*does not exist"):
        load_pool(missing)


def test_default_location(tmp_path: Path) -> None:
    assert load_pool() is None  # nothing configured: the caller uses the embedded pool
    path = default_pool_path()
    assert path == tmp_path / "xdg" / "parallelize" / "pool.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[hosts.a]\nhost = "10.1.1.1"\n')
    config = load_pool()
    assert config is not None and config.hosts[0].host == "10.1.1.1"


def test_env_var_overrides_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = default_pool_path()
    default.parent.mkdir(parents=True)
    default.write_text('[hosts.default]\nhost = "10.1.1.1"\n')
    other = write(tmp_path, '[hosts.fromenv]\nhost = "10.2.2.2"\n', "env.toml")
    monkeypatch.setenv("PARALLELIZE_POOL_FILE", str(other))
    config = load_pool()
    assert config is not None and config.hosts[0].name == "fromenv"
    explicit = write(tmp_path, '[hosts.explicit]\nhost = "10.3.3.3"\n', "explicit.toml")
    config = load_pool(explicit)
    assert config is not None and config.hosts[0].name == "explicit"
    monkeypatch.setenv("PARALLELIZE_POOL_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(PoolConfigError, match="PARALLELIZE_POOL_FILE"):
        load_pool()


def test_ssh_config_alias(tmp_path: Path) -> None:
    key = tmp_path / "alias_key"
    key.write_text("dummy")
    ssh_config = write(
        tmp_path,
        f"""
Host gpu-alias
    HostName 10.9.9.9
    User sshuser
    Port 2200
    IdentityFile {key}
    ProxyJump jumper@bastion.example.com:2022

Host plain
    HostName plain.example.com
""",
        "ssh_config",
    )
    path = write(
        tmp_path,
        """
[defaults]
user = "defaultuser"
[hosts.gpu]
host = "gpu-alias"
[hosts.override]
host = "gpu-alias"
user = "explicit"
port = 22
[hosts.plain]
""",
    )
    config = load_pool(path, ssh_config=ssh_config)
    assert config is not None
    gpu, override, plain = config.hosts
    assert (gpu.host, gpu.user, gpu.port, gpu.identity_file, gpu.gateway) == (
        "10.9.9.9",
        "sshuser",
        2200,
        str(key),
        "jumper@bastion.example.com:2022",
    )
    assert (override.host, override.user, override.port) == ("10.9.9.9", "explicit", 22)
    assert (plain.host, plain.user) == ("plain.example.com", "defaultuser")


def test_ssh_config_default_location(tmp_path: Path) -> None:
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "config").write_text("Host short\n    HostName long.example.com\n    User u1\n")
    config = load_pool(write(tmp_path, '[hosts.x]\nhost = "short"\n'))
    assert config is not None
    assert (config.hosts[0].host, config.hosts[0].user) == ("long.example.com", "u1")


def test_controller_in_pool_gets_half_its_slots(tmp_path: Path) -> None:
    hostname = socket.gethostname()
    path = write(
        tmp_path,
        f"""
[hosts.me]
host = "{hostname}"
slots = 8
[hosts.lh]
host = "localhost"
slots = 1
[hosts.loopback-test-host]
host = "127.0.0.2"
slots = 4
[hosts.forced]
host = "10.0.0.1"
slots = 6
controller = true
[hosts.not-me]
host = "localhost"
slots = 6
controller = false
""",
    )
    config = load_pool(path)
    assert config is not None
    assert [h.slots for h in config.hosts] == [4, 1, 4, 3, 6]


def test_controller_detection_rule() -> None:
    assert is_controller_host("localhost")
    assert is_controller_host(socket.gethostname())
    assert not is_controller_host("127.0.0.2")
    assert not is_controller_host("127.0.0.1")
    assert not is_controller_host("192.0.2.254")


def test_embedded_pool() -> None:
    config = embedded_pool()
    (spec,) = config.hosts
    assert spec.is_local and spec.name == "local"
    assert spec.slots == (os.cpu_count() or 1)
    assert spec.python == sys.executable
    assert embedded_pool(3).hosts[0].slots == 3
    with pytest.raises(ValueError):
        embedded_pool(0)
