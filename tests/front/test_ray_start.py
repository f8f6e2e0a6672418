"""runtime/front/ray_start.py without starting a Ray: what counts as loopback, and the
one-host switch it sets before the embedded Ray starts (the listeners it yields are listed
by tests/front/test_serve.py's embedded app)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from ray._private import ray_constants

from runtime.front import ray_start


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),  # a dual-stack socket bound to IPv4 loopback
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("192.0.2.2", False),
        ("fe80::1", False),
        ("example.org", False),
    ],
)
def test_is_loopback(address: str, loopback: bool):
    assert ray_start.is_loopback(address) is loopback


def test_keep_ray_on_loopback_sets_rays_one_host_switch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ray_constants, ray_start.RAY_ONE_HOST_CONSTANT, True)
    monkeypatch.delenv(ray_start.RAY_ONE_HOST_ENV, raising=False)
    ray_start.keep_ray_on_loopback()
    assert getattr(ray_constants, ray_start.RAY_ONE_HOST_CONSTANT) is False  # this process's Ray
    assert os.environ[ray_start.RAY_ONE_HOST_ENV] == "0"  # the processes it starts


def test_an_embedded_ray_on_an_outward_address_is_refused():
    calls: list[str] = []
    fake = SimpleNamespace(
        util=SimpleNamespace(get_node_ip_address=lambda: "192.0.2.2"), shutdown=lambda: calls.append("shutdown")
    )
    with pytest.raises(ray_start.EmbeddedRayExposed, match="192.0.2.2"):
        ray_start._check_loopback(fake)
    assert calls == ["shutdown"]
    fake.util.get_node_ip_address = lambda: "127.0.0.1"
    ray_start._check_loopback(fake)  # loopback: no error
    assert calls == ["shutdown"]
