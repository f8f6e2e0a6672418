"""Config files: every bad value is an error naming its key path and why; env overrides the
file, `rtcpool serve` flags override both; every file under configs/ is valid."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from runtime.cli import main
from runtime.config import DEFAULT_CONFIG
from runtime.config_loader import ConfigError, load_config
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"  # the checkout's deployment configs (local.yaml links to the packaged default)
SERVE_TIMEOUT_S = 60.0  # `rtcpool serve` of an app that prints its config and exits
KUBERAY_MANIFEST = CONFIG_DIR / "kuberay" / "raycluster-gpu.yaml"
STATUS_DOWN_S = (
    10.0  # `rtcpool status` of an address nobody listens on (ray.init would retry for minutes)
)


def test_the_embedded_default_loads():
    cfg = load_config(DEFAULT_CONFIG, environ={})
    assert cfg.ray.address is None
    assert cfg.gateway.port == 7860
    assert cfg.pool.prewarm >= 1


# (YAML text, the key path the error must name, a word of the reason)
BAD_CONFIGS = [
    # unknown keys, at every level, with a suggestion when one is close
    ("poool:\n  prewarm: 1\n", "poool", "unknown key (did you mean 'pool'?)"),
    ("ray:\n  adress: auto\n", "ray.adress", "did you mean 'address'?"),
    ("gateway:\n  prot: 1\n", "gateway.prot", "did you mean 'port'?"),
    ("pool:\n  prewarmm: 1\n", "pool.prewarmm", "did you mean 'prewarm'?"),
    ("streams:\n  s:\n    limit: 2\n", "streams.s.limit", "unknown key"),
    ("streams:\n  s:\n    pool: {gpus: 1}\n", "streams.s.pool.gpus", "unknown key"),
    (
        "gateway:\n  ice_servers: [{url: 'stun:x'}]\n",
        "gateway.ice_servers.0.url",
        "did you mean 'urls'?",
    ),
    # wrong types: strict, nothing is coerced
    ("ray: 5\n", "ray", "valid dictionary"),
    ("ray:\n  address: 6379\n", "ray.address", "valid string"),
    ("ray:\n  namespace: [a]\n", "ray.namespace", "valid string"),
    ("ray:\n  num_cpus: 1.5\n", "ray.num_cpus", "valid integer"),
    ("ray:\n  include_dashboard: 'yes'\n", "ray.include_dashboard", "valid boolean"),
    ("ray:\n  detached_scheduler: 1\n", "ray.detached_scheduler", "valid boolean"),
    ("gateway:\n  host: 127\n", "gateway.host", "valid string"),
    ("gateway:\n  port: seventy\n", "gateway.port", "valid integer"),
    ("gateway:\n  port: '8000'\n", "gateway.port", "valid integer (got '8000')"),
    ("gateway:\n  port: true\n", "gateway.port", "valid integer (got True)"),
    ("gateway:\n  port: 80.5\n", "gateway.port", "valid integer"),
    ("gateway:\n  ice_servers: 'stun:x'\n", "gateway.ice_servers", "valid list"),
    ("gateway:\n  ice_servers: [{urls: 5}]\n", "gateway.ice_servers.0.urls", "valid list"),
    ("gateway:\n  ice_servers: [{urls: [5]}]\n", "gateway.ice_servers.0.urls.0", "valid string"),
    ("gateway:\n  ice_servers: [{urls: []}]\n", "gateway.ice_servers.0.urls", "at least 1 item"),
    ("gateway:\n  ice_host_addresses: 127.0.0.1\n", "gateway.ice_host_addresses", "valid list"),
    ("gateway:\n  connect_timeout_s: 10s\n", "gateway.connect_timeout_s", "valid number"),
    (
        "gateway:\n  media_inactivity_timeout_s: null\n",
        "gateway.media_inactivity_timeout_s",
        "valid number",
    ),
    ("gateway:\n  transport: 1\n", "gateway.transport", "'auto', 'shm' or 'tcp'"),
    ("pool:\n  prewarm: 1.5\n", "pool.prewarm", "valid integer"),
    ("pool:\n  num_gpus: lots\n", "pool.num_gpus", "valid number"),
    ("pool:\n  memory: lots\n", "pool.memory", "could not parse"),
    ("pool:\n  resources: [far_node]\n", "pool.resources", "valid dictionary"),
    ("pool:\n  resources: {far_node: x}\n", "pool.resources.far_node", "valid number"),
    ("streams: [a]\n", "streams", "valid dictionary"),
    ("streams:\n  s:\n    time_limit: soon\n", "streams.s.time_limit", "valid number"),
    # impossible values
    ("ray:\n  address: localhost\n", "ray.address", "not a Ray address"),
    ("ray:\n  address: 'head:70000'\n", "ray.address", "port 70000 is not between 1 and 65535"),
    ("ray:\n  address: 'ray://head:99999'\n", "ray.address", "port 99999 is not between 1"),
    ("ray:\n  address: '[::1]:65536'\n", "ray.address", "port 65536 is not between 1"),
    ("ray:\n  address: 'head:0'\n", "ray.address", "port 0 is not between 1 and 65535"),
    ("ray:\n  address: 'http://head:8265'\n", "ray.address", "not a Ray address"),
    ("ray:\n  address: auto\n  num_cpus: 2\n", "ray.num_cpus", "only for the embedded local Ray"),
    ("ray:\n  num_cpus: 0\n", "ray.num_cpus", "greater than or equal to 1"),
    ("ray:\n  namespace: ''\n", "ray.namespace", "at least 1 character"),
    ("gateway:\n  host: ''\n", "gateway.host", "at least 1 character"),
    ("gateway:\n  port: -1\n", "gateway.port", "greater than or equal to 0"),
    ("gateway:\n  port: 70000\n", "gateway.port", "less than or equal to 65535"),
    (
        "gateway:\n  ice_host_addresses: [127.0.0.1, localhost]\n",
        "gateway.ice_host_addresses.1",
        "not an IP address",
    ),
    ("gateway:\n  connect_timeout_s: 0\n", "gateway.connect_timeout_s", "greater than 0"),
    ("gateway:\n  max_offer_bytes: 0\n", "gateway.max_offer_bytes", "greater than 0"),
    ("gateway:\n  max_frame_pixels: -5\n", "gateway.max_frame_pixels", "greater than 0"),
    ("gateway:\n  transport: udp\n", "gateway.transport", "'auto', 'shm' or 'tcp'"),
    (
        "gateway:\n  audio_jitter_prefetch: 16\n",
        "gateway.audio_jitter_prefetch",
        "less than or equal to 15",
    ),
    ("pool:\n  prewarm: -1\n", "pool.prewarm", "greater than or equal to 0"),
    ("pool:\n  max_workers: 0\n", "pool.max_workers", "greater than or equal to 1"),
    ("pool:\n  num_cpus: -1\n", "pool.num_cpus", "greater than or equal to 0"),
    ("pool:\n  num_cpus: 0.00001\n", "pool.num_cpus", "finer than Ray's resource precision"),
    ("pool:\n  num_gpus: -0.5\n", "pool.num_gpus", "greater than or equal to 0"),
    ("pool:\n  num_gpus: 1.5\n", "pool.num_gpus", "must be a whole number"),
    ("pool:\n  memory: -1\n", "pool.memory", "could not parse"),
    (
        "pool:\n  resources: {far_node: -1}\n",
        "pool.resources.far_node",
        "greater than or equal to 0",
    ),
    ("pool:\n  resources: {far_node: 0.00001}\n", "pool.resources.far_node", "finer than"),
    ("pool:\n  resources: {CPU: 1}\n", "pool.resources.CPU", "use pool.num_cpus"),
    ("pool:\n  resources: {GPU: 1}\n", "pool.resources.GPU", "use pool.num_gpus"),
    ("pool:\n  resources: {memory: 1}\n", "pool.resources.memory", "use pool.memory"),
    ("pool:\n  resources: {'': 1}\n", "pool.resources.''", "at least 1 character"),
    (
        "streams:\n  s:\n    concurrency_limit: 0\n",
        "streams.s.concurrency_limit",
        "greater than or equal to 1",
    ),
    ("streams:\n  s:\n    time_limit: 0\n", "streams.s.time_limit", "greater than 0"),
    ("streams:\n  s:\n    pool: {num_gpus: 2.5}\n", "streams.s.pool.num_gpus", "whole number"),
    ("gateway:\n  processes: 0\n", "gateway.processes", "from 1 to 64, got 0"),
    ("gateway:\n  processes: 65\n", "gateway.processes", "from 1 to 64, got 65"),
    ("gateway:\n  processes: many\n", "gateway.processes", "must be 'auto' or a whole number"),
    ("gateway:\n  processes: [2]\n", "gateway.processes", "got [2]"),
    ("gateway:\n  processes: true\n", "gateway.processes", "got True"),
    ("queue:\n  max_size: -1\n", "queue.max_size", "greater than or equal to 0"),
    ("queue:\n  timeout_s: 0\n", "queue.timeout_s", "greater than 0"),
    ("queue:\n  admit_hold_s: -2\n", "queue.admit_hold_s", "greater than 0"),
    ("queue:\n  size: 3\n", "queue.size", "unknown key"),
    ("streams:\n  s:\n    max_queue: -1\n", "streams.s.max_queue", "greater than or equal to 0"),
    ("streams:\n  s:\n    queue: maybe\n", "streams.s.queue", "valid boolean"),
    ("streams:\n  s:\n    queue_timeout_s: 0\n", "streams.s.queue_timeout_s", "greater than 0"),
    ("telephone:\n  public_url: ftp://x\n", "telephone.public_url", "should match pattern"),
    ("telephone:\n  public_url: https://a b\n", "telephone.public_url", "should match pattern"),
    ("telephone:\n  twilio_auth_token_env: lower-case\n", "telephone.twilio_auth_token_env", "should match pattern"),
    ("telephone:\n  greeting: " + "x" * 501 + "\n", "telephone.greeting", "at most 500 characters"),
    ("telephone:\n  token: abc\n", "telephone.token", "unknown key"),
]


@pytest.mark.parametrize(
    ("text", "key", "why"), BAD_CONFIGS, ids=[c[1] + ":" + c[2][:24] for c in BAD_CONFIGS]
)
def test_bad_configs_name_the_key_and_why(tmp_path: Path, text: str, key: str, why: str):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    lines = str(err.value).splitlines()
    assert lines[0] == f"invalid config {f}:"
    assert any(line.strip().startswith(f"{key}:") and why in line for line in lines[1:]), str(
        err.value
    )


# (environment, words every one of which the error must hold): variables that cannot mean
# anything are errors naming them, never a bare TypeError or a setting silently dropped
BAD_ENVIRONMENTS = [
    (
        {"RTCPOOL_POOL__PREWARM": "2", "RTCPOOL_POOL__PREWARM__X": "1"},
        ["RTCPOOL_POOL__PREWARM sets pool.prewarm to a value", "RTCPOOL_POOL__PREWARM__X sets pool.prewarm.x"],
    ),
    (  # the same two, the other way round: the mapping must not silently replace the value
        {"RTCPOOL_STREAMS__s__POOL": "{prewarm: 1}", "RTCPOOL_STREAMS__s__POOL__PREWARM": "2"},
        ["RTCPOOL_STREAMS__s__POOL sets streams.s.pool", "RTCPOOL_STREAMS__s__POOL__PREWARM"],
    ),
    (
        {"RTCPOOL_POOL__PREWARM": "2", "RTCPOOL_pool__prewarm": "3"},
        ["RTCPOOL_POOL__PREWARM and RTCPOOL_pool__prewarm both set pool.prewarm"],
    ),
    (
        {"RTCPOOL_GATEWAY_PORT": "8000"},
        ["RTCPOOL_GATEWAY_PORT is not an rtcpool setting", "did you mean RTCPOOL_GATEWAY__PORT?"],
    ),
    ({"RTCPOOL_PREWARM": "2"}, ["RTCPOOL_PREWARM is not an rtcpool setting", "RTCPOOL_CONFIG"]),
    ({"RTCPOOL_POOL__": "2"}, ["RTCPOOL_POOL__: an empty key"]),
    ({"RTCPOOL_POOL____PREWARM": "2"}, ["RTCPOOL_POOL____PREWARM: an empty key"]),
    ({"RTCPOOL_GATEWAYS__PORT": "1"}, ["gateways: unknown key (did you mean 'gateway'?) (from RTCPOOL_GATEWAYS__PORT)"]),
    ({"RTCPOOL_RAY__ADDRESS": "head:70000"}, ["ray.address", "port 70000", "(from RTCPOOL_RAY__ADDRESS)"]),
]


@pytest.mark.parametrize(("environ", "words"), BAD_ENVIRONMENTS, ids=[",".join(e) for e, _ in BAD_ENVIRONMENTS])
def test_bad_environments_name_the_variables_and_why(environ: dict[str, str], words: list[str]):
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT_CONFIG, environ=environ)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_the_names_rtcpool_itself_sets_are_not_settings():
    own = {"RTCPOOL_CONFIG": str(DEFAULT_CONFIG), "RTCPOOL_CLI_OVERRIDES": "{}", "RTCPOOL_WORKER_IMPORT": "1"}
    assert load_config(None, environ=own) == load_config(DEFAULT_CONFIG, environ={})


def test_set_flags_that_clash_name_both(tmp_path: Path):
    from runtime.cli import serve_overrides

    def overrides(*argv: str) -> dict:
        args = argparse.Namespace(set=list(argv), host=None, port=None, address=None, ice_host_address=None)
        return serve_overrides(args)

    with pytest.raises(ConfigError) as err:
        overrides("pool.prewarm=2", "pool.prewarm.x=1")
    assert "--set pool.prewarm=2 sets pool.prewarm to a value" in str(err.value)
    assert "--set pool.prewarm.x=1 sets pool.prewarm.x inside it" in str(err.value)
    with pytest.raises(ConfigError, match="--port sets gateway.port to a value, and --set gateway.port.x=1"):
        serve_overrides(argparse.Namespace(set=["gateway.port.x=1"], host=None, port=80, address=None, ice_host_address=None))
    # the same key twice: the later flag wins, as a named flag beats --set
    assert overrides("pool.prewarm=2", "pool.prewarm=3") == {"pool": {"prewarm": 3}}


def test_the_embedded_default_starts_a_ray_of_its_own():
    """address null must not let Ray join what RAY_ADDRESS or a `ray start` on this host
    names: ray.init gets address="local" (and num_cpus, which the local Ray takes)."""
    local = load_config(DEFAULT_CONFIG, environ={}).ray
    assert local.embedded and local.init_kwargs()["address"] == "local"
    assert "num_cpus" not in local.init_kwargs()
    two = load_config(DEFAULT_CONFIG, environ={"RTCPOOL_RAY__NUM_CPUS": "2"}).ray
    assert two.init_kwargs()["num_cpus"] == 2
    explicit = load_config(DEFAULT_CONFIG, environ={"RTCPOOL_RAY__ADDRESS": "local", "RTCPOOL_RAY__NUM_CPUS": "2"}).ray
    assert explicit.init_kwargs()["address"] == "local" and explicit.init_kwargs()["num_cpus"] == 2, (
        "address local keeps num_cpus"
    )
    joined = load_config(CONFIG_DIR / "cluster.yaml", environ={"RTCPOOL_RAY__NAMESPACE": "app-b"}).ray
    assert not joined.embedded
    assert joined.init_kwargs() == {"address": "auto", "namespace": "app-b", "include_dashboard": False}


def test_every_error_of_a_file_at_once(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("gateway:\n  port: -1\n  prot: 1\npool:\n  num_gpus: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    assert len(str(err.value).splitlines()) == 4  # the heading and three errors


def test_a_bad_top_level_pool_value_is_reported_once(tmp_path: Path):
    """Streams inherit the top-level pool: its error must not repeat under each stream."""
    f = tmp_path / "bad.yaml"
    f.write_text(
        "pool:\n  num_gpus: -1\nstreams:\n  a:\n    pool: {prewarm: 2}\n  b:\n    pool: {prewarm: 3}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    assert str(err.value).splitlines()[1:] == [
        "  pool.num_gpus: Input should be greater than or equal to 0 (got -1)"
    ]


def test_not_yaml_and_missing_file(tmp_path: Path):
    f = tmp_path / "x.yaml"
    f.write_text("gateway: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml", environ={})
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="RTCPOOL_GATEWAY__PORT is not a YAML value"):
        load_config(DEFAULT_CONFIG, environ={"RTCPOOL_GATEWAY__PORT": "[1"})


def test_streams_inherit_the_pool_and_take_resources(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "pool:\n  num_cpus: 1\n  memory: 2GiB\n  prewarm: 2\n"
        "streams:\n  detect:\n    pool:\n      num_gpus: 0.25\n      resources: {big_node: 1}\n"
    )
    cfg = load_config(f, environ={})
    pool = cfg.streams["detect"].pool
    assert pool is not None
    assert pool.model_dump() == {
        "prewarm": 2,
        "max_workers": 8,
        "num_cpus": 1.0,
        "num_gpus": 0.25,
        "memory": 2 * 2**30,
        "resources": {"big_node": 1.0},
        # failover (docs/failover.md): the defaults
        "spare_workers": 0,
        "snapshot_interval_s": 1.0,
        "max_restarts": 3,
        "restart_window_s": 60.0,
        "worker_memory_limit_mb": 16_384,
        "max_snapshot_bytes": 1 << 20,
    }
    assert type(pool.model_dump()["memory"]) is int  # what Ray's .options(memory=) takes


def test_env_overrides_file_and_overrides_beat_env(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("gateway:\n  port: 8000\n")
    env = {"RTCPOOL_GATEWAY__PORT": "9000", "RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES": "[127.0.0.1]"}
    assert load_config(f, environ={}).gateway.port == 8000
    cfg = load_config(f, environ=env)
    assert cfg.gateway.port == 9000
    assert cfg.gateway.ice_host_addresses == ["127.0.0.1"]
    assert load_config(f, environ=env, overrides={"gateway": {"port": 9100}}).gateway.port == 9100
    with pytest.raises(ConfigError, match="gateway.bogus"):
        load_config(f, environ={"RTCPOOL_GATEWAY__BOGUS": "1"})


def test_env_names_a_stream_by_its_id_and_errors_name_the_variable():
    env = {
        "RTCPOOL_STREAMS__myStream__POOL__RESOURCES": "{far_node: 1}",
        "RTCPOOL_POOL__NUM_CPUS": "2",
    }
    cfg = load_config(DEFAULT_CONFIG, environ=env)
    pool = cfg.streams["myStream"].pool
    assert pool is not None and pool.resources == {"far_node": 1.0} and pool.num_cpus == 2.0
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT_CONFIG, environ={"RTCPOOL_POOL__NUM_GPUS": "-1"})
    assert (
        "pool.num_gpus: Input should be greater than or equal to 0 (got -1) (from RTCPOOL_POOL__NUM_GPUS)"
        in str(err.value)
    )


# An app that prints the config its gateway would get, as `rtcpool serve` runs it.
PRINT_CONFIG_APP = """\
import json, os
from runtime.config_loader import load_config
cfg = load_config()
print("EFFECTIVE " + json.dumps({
    "port": cfg.gateway.port,
    "host": cfg.gateway.host,
    "address": cfg.ray.address,
    "prewarm": cfg.pool.prewarm,
    "max_workers": cfg.pool.max_workers,
    "ice": cfg.gateway.ice_host_addresses,
    "far": cfg.streams["far"].pool.resources if "far" in cfg.streams else None,
    "gradio_port": os.environ.get("GRADIO_SERVER_PORT"),
}))
raise SystemExit(0)  # done: it serves nothing (`rtcpool serve` would say so and fail)
"""


def _serve(
    tmp_path: Path, flags: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "print_config.py"
    app.write_text(PRINT_CONFIG_APP)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RTCPOOL_")}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", str(app), *flags],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT_S,
    )


def _effective(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("EFFECTIVE ")]
    return json.loads(line.removeprefix("EFFECTIVE "))


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_serve_flags_beat_env_which_beats_the_file(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway:\n  port: 8000\n  host: 127.0.0.1\npool:\n  prewarm: 1\n  max_workers: 3\n"
    )
    env = {
        "RTCPOOL_GATEWAY__PORT": "9000",
        "RTCPOOL_POOL__PREWARM": "2",
        "RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES": "[127.0.0.2]",
    }
    # the file alone, then the environment on top of it
    assert _effective(_serve(tmp_path, ["--config", str(f)], {}))["port"] == 8000
    by_env = _effective(_serve(tmp_path, ["--config", str(f)], env))
    assert (by_env["port"], by_env["prewarm"], by_env["ice"]) == (9000, 2, ["127.0.0.2"])
    # flags on top of both; keys no flag names keep the env's or the file's value
    flags = [
        "--config", str(f),
        "--port", "9100",
        "--address", "10.0.0.1:6379",
        "--ice-host-address", "127.0.0.3",
        "--set", "pool.prewarm=3",
        "--set", "streams.far.pool.resources={far_node: 1}",
    ]  # fmt: skip
    got = _effective(_serve(tmp_path, flags, env))
    assert got == {
        "port": 9100,
        "host": "127.0.0.1",
        "address": "10.0.0.1:6379",
        "prewarm": 3,
        "max_workers": 3,
        "ice": ["127.0.0.3"],
        "far": {"far_node": 1.0},
        "gradio_port": "9100",  # a Gradio app's launch() serves on the configured port
    }


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_serve_refuses_a_bad_flag_before_importing_the_app(tmp_path: Path):
    result = _serve(tmp_path, ["--port", "70000"], {})
    assert result.returncode == 2
    assert (
        "gateway.port: Input should be less than or equal to 65535 (got 70000) (from the command line)"
        in result.stderr
    )
    assert "EFFECTIVE" not in result.stdout
    result = _serve(tmp_path, ["--set", "pool.prewarm"], {})
    assert result.returncode == 2 and "KEY.PATH=VALUE" in result.stderr


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_config_check_accepts_every_config_file(path: Path, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("RTCPOOL_")]:
        monkeypatch.delenv(key)
    assert main(["config", "check", str(path)]) == 0
    effective = json.loads(capsys.readouterr().out)
    assert set(effective) == {"ray", "gateway", "pool", "queue", "telephone", "sockets", "streams"}


def test_config_check_without_a_file_takes_the_environment_then_the_embedded_default(
    tmp_path: Path, capsys, monkeypatch
):
    for key in [k for k in os.environ if k.startswith("RTCPOOL_")]:
        monkeypatch.delenv(key)
    assert main(["config", "check"]) == 0
    assert json.loads(capsys.readouterr().out) == load_config(DEFAULT_CONFIG, environ={}).model_dump()
    named = tmp_path / "named.yaml"
    named.write_text("pool:\n  max_workers: 3\n")
    monkeypatch.setenv("RTCPOOL_CONFIG", str(named))
    assert main(["config", "check"]) == 0
    assert json.loads(capsys.readouterr().out)["pool"]["max_workers"] == 3


def test_config_check_of_a_bad_file_exits_2_naming_the_key(tmp_path: Path, capsys):
    bad = tmp_path / "b.yaml"
    bad.write_text("pool:\n  max_workers: 0\n")
    assert main(["config", "check", str(bad)]) == 2
    assert (
        "pool.max_workers: Input should be greater than or equal to 1 (got 0)"
        in capsys.readouterr().err
    )


def test_the_shipped_configs_say_what_they_are_for():
    cluster = load_config(CONFIG_DIR / "cluster.yaml", environ={})
    assert cluster.ray.address == "auto" and cluster.ray.detached_scheduler
    gpu = load_config(CONFIG_DIR / "gpu.yaml", environ={})
    assert gpu.pool.num_gpus is not None and 0 < gpu.pool.num_gpus < 1, (
        "each handler asks for a GPU fraction"
    )
    assert gpu.ray.address == "auto" and gpu.ray.detached_scheduler


def test_the_kuberay_manifest_fits_this_ray_and_config(tmp_path: Path):
    docs = {d["kind"]: d for d in yaml.safe_load_all(KUBERAY_MANIFEST.read_text())}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    [gpu_container] = groups["gpu"]["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    # the gateway pods serve with the config the ConfigMap holds, where they mount it
    [gateway] = groups["gateway"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    mount = mounts["rtcpool-config"]
    config_map = docs["ConfigMap"]
    [(name, text)] = config_map["data"].items()
    assert f"--config {mount['mountPath']}/{name}" in " ".join(gateway["args"])
    f = tmp_path / name
    f.write_text(text)
    cfg = load_config(f, environ={})
    assert cfg.ray.address == "auto" and cfg.ray.detached_scheduler
    assert cfg.pool.num_gpus is not None and 0 < cfg.pool.num_gpus < 1
    assert docs["Service"]["spec"]["selector"]["ray.io/group"] == "gateway"
    # probes on the gateway's own routes; a /dev/shm that holds the slots; time to drain
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/webrtc/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/webrtc/health"
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    volumes = {v["name"]: v for v in groups["gateway"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert groups["gateway"]["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.gateway.drain_timeout_s
    # Ray's token auth stays on in every pod, with one token from a Secret
    containers = [cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0], gateway, gpu_container]
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "rtcpool-ray-token"
    # host networking: gateway pods must never share a node (they would clash on ports)
    spec = groups["gateway"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    [rule] = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert rule["labelSelector"]["matchLabels"] == {
        "ray.io/cluster": cluster["metadata"]["name"],
        "ray.io/group": "gateway",
    }


def test_status_of_a_cluster_that_is_down_says_so_at_once(capsys):
    started = time.monotonic()
    assert main(["status", "--address", f"127.0.0.1:{free_port()}"]) == 1
    assert time.monotonic() - started < STATUS_DOWN_S
    assert "no Ray cluster reachable" in capsys.readouterr().err


@pytest.mark.parametrize(("cores", "count"), [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (16, 8), (1000, 64)])
def test_auto_media_processes_follow_the_cores(cores: int, count: int):
    from runtime.config import GatewayConfig

    assert GatewayConfig().media_processes(cores=cores) == count
    assert GatewayConfig(processes=3).media_processes(cores=cores) == 3


def test_media_processes_from_env_and_set(tmp_path: Path):
    assert load_config(environ={"RTCPOOL_GATEWAY__PROCESSES": "2"}).gateway.processes == 2
    assert load_config(environ={"RTCPOOL_GATEWAY__PROCESSES": "auto"}).gateway.processes == "auto"


def test_the_checkout_config_folder_links_the_packaged_default():
    """configs/local.yaml is what the docs name; the file itself lives in the package so a
    wheel has it. A copy instead of the link would drift."""
    assert (CONFIG_DIR / "local.yaml").resolve() == DEFAULT_CONFIG
    assert DEFAULT_CONFIG.parent.parent == REPO / "runtime"
