"""Config files: validated with errors that name the key; env overrides file; flags override env."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cli import main
from runtime.config import DEFAULT_CONFIG, ConfigError, load_config


def test_the_embedded_default_loads():
    cfg = load_config(DEFAULT_CONFIG, environ={})
    assert cfg.ray.address is None
    assert cfg.gateway.port == 7860
    assert cfg.pool.prewarm >= 1


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("gateway:\n  prot: 1\n", "gateway.prot", "unknown key"),
        ("gateway:\n  port: seventy\n", "gateway.port", "integer"),
        ("gateway:\n  port: 70000\n", "gateway.port", "less than or equal"),
        ("pool:\n  prewarm: -1\n", "pool.prewarm", "greater than or equal"),
        ("pool:\n  num_gpus: lots\n", "pool.num_gpus", "number"),
        ("streams:\n  s:\n    concurrency_limit: 0\n", "streams.s.concurrency_limit", "greater than or equal"),
        ("ray:\n  adress: auto\n", "ray.adress", "unknown key"),
        ("gateway:\n  ice_servers: [{url: x}]\n", "gateway.ice_servers.0", ""),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, text: str, key: str, why: str):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={})
    assert key in str(err.value)
    assert why in str(err.value)


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


def test_cli_config_check(tmp_path: Path, capsys):
    assert main(["config", "check", str(DEFAULT_CONFIG)]) == 0
    assert '"port": 7860' in capsys.readouterr().out
    bad = tmp_path / "b.yaml"
    bad.write_text("pool:\n  max_workers: 0\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "pool.max_workers" in capsys.readouterr().err
