"""The run directory of `rtcpool drain` (issue 20 item 16): made 0700, refused when someone
else could write it, and no pid signalled unless it is the very gateway process of this
user that announced itself. The victims are live processes of this user (`sleep`), so a
signal sent by mistake would kill them: each test asserts they live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime import cli
from runtime.ops import drain, run_dir

VICTIM_S = "60"  # a victim outlives its test
WAIT_S = "1"  # `rtcpool drain --wait`: nothing real to wait for here
NOBODY_UID = 65534


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this user that is no gateway."""
    process = subprocess.Popen(["sleep", VICTIM_S])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def default_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default run dir (no RTCPOOL_RUN_DIR) under a base of this test's: its path."""
    monkeypatch.delenv("RTCPOOL_RUN_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path / f"rtcpool-{os.getuid()}" / "gateways"


def plant(directory: Path, pid: int, **fields: object) -> Path:
    """A record as an attacker (or a stale file) leaves it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{pid}.json"
    record = {"pid": pid, "gateway_id": "g", "host": "127.0.0.1", "port": 1, "started_at": 0.0, **fields}
    path.write_text(json.dumps(record))
    return path


def drain_cli(capsys: pytest.CaptureFixture[str], *pids: int) -> tuple[int, str]:
    code = cli.main(["drain", "--wait", WAIT_S, *map(str, pids)])
    return code, capsys.readouterr().err


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_the_run_dir_is_made_0700_and_a_record_0600(default_layout: Path):
    path = run_dir.write_record(run_dir.this_process_record("g", "127.0.0.1", 7860))
    assert path.parent == default_layout
    assert _mode(default_layout) == 0o700 and _mode(default_layout.parent) == 0o700
    assert _mode(path) == 0o600
    [record] = run_dir.gateway_records()
    assert record.pid == os.getpid() and record.start_ticks == run_dir.start_ticks(os.getpid())


@pytest.mark.parametrize("level", ["rtcpool-uid", "gateways"])
def test_a_world_writable_run_dir_is_refused_and_nothing_in_it_signalled(default_layout, victim, capsys, level):
    # another user made /tmp/rtcpool-<uid> (or its gateways/) first, open to all, and
    # listed a pid there: exactly what it would take to have `rtcpool drain` kill it
    plant(default_layout, victim.pid, start_ticks=run_dir.start_ticks(victim.pid))
    opened = default_layout.parent if level == "rtcpool-uid" else default_layout
    opened.chmod(0o777)
    code, err = drain_cli(capsys)
    assert code == cli.EXIT_UNSAFE_RUN_DIR, err
    assert "writable by others" in err and str(opened) in err
    code, err = drain_cli(capsys, victim.pid)
    assert code == cli.EXIT_UNSAFE_RUN_DIR, err
    assert victim.poll() is None, "a pid listed in someone else's directory was signalled"
    with pytest.raises(run_dir.UnsafeRunDir):  # nor does a gateway announce itself there
        run_dir.write_record(run_dir.this_process_record("g", "127.0.0.1", 7860))
    assert sorted(p.name for p in default_layout.iterdir()) == [f"{victim.pid}.json"]


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user's needs root")
def test_a_run_dir_of_another_user_is_refused(default_layout, victim, capsys):
    plant(default_layout, victim.pid, start_ticks=run_dir.start_ticks(victim.pid))
    os.chown(default_layout.parent, NOBODY_UID, NOBODY_UID)
    default_layout.parent.chmod(0o700)
    code, err = drain_cli(capsys)
    assert code == cli.EXIT_UNSAFE_RUN_DIR and f"belongs to uid {NOBODY_UID}" in err, err
    assert victim.poll() is None


def test_a_run_dir_that_is_a_symlink_is_refused(default_layout, tmp_path, victim, capsys):
    elsewhere = tmp_path / "elsewhere"
    plant(elsewhere, victim.pid, start_ticks=run_dir.start_ticks(victim.pid))
    elsewhere.chmod(0o700)
    default_layout.parent.mkdir(mode=0o700)
    default_layout.symlink_to(elsewhere)
    code, err = drain_cli(capsys)
    assert code == cli.EXIT_UNSAFE_RUN_DIR and "not a directory" in err, err
    assert victim.poll() is None


def test_a_record_that_is_not_the_process_it_names_is_never_signalled(default_layout, victim, capsys):
    # in this user's own directory: a record without the start time, one with another start
    # time (the pid reused by a process that is no gateway), and pid 1; only the last is kept
    # as a record at all (pid 1 is not ours unless the test runs as root, then not its start)
    default_layout.parent.mkdir(mode=0o700)
    default_layout.mkdir(mode=0o700)
    plant(default_layout, victim.pid)
    code, err = drain_cli(capsys)
    assert code == cli.EXIT_OK and "no gateway process" in err, err
    plant(default_layout, victim.pid, start_ticks=(run_dir.start_ticks(victim.pid) or 0) + 1)
    plant(default_layout, 1, start_ticks=0)
    code, err = drain_cli(capsys, victim.pid, 1)
    assert code == cli.EXIT_NOT_A_GATEWAY, err
    assert f"{victim.pid} is not a gateway process" in err and "1 is not a gateway process" in err
    assert victim.poll() is None, "a pid whose start time is not the recorded one was signalled"
    # the records of processes that are not theirs are stale: removed
    assert not (default_layout / f"{victim.pid}.json").exists()


@pytest.mark.parametrize("flaw", ["group-writable", "symlink", "oversized", "misnamed"])
def test_a_record_file_not_of_this_users_making_is_ignored(default_layout, tmp_path, victim, capsys, flaw):
    default_layout.parent.mkdir(mode=0o700)
    default_layout.mkdir(mode=0o700)
    ticks = run_dir.start_ticks(victim.pid)
    if flaw == "symlink":
        target = plant(tmp_path / "other", victim.pid, start_ticks=ticks)
        (default_layout / f"{victim.pid}.json").symlink_to(target)
    elif flaw == "misnamed":  # a record named for one pid that lists another
        (default_layout / "12345.json").write_text(plant(tmp_path / "other", victim.pid, start_ticks=ticks).read_text())
    else:
        path = plant(default_layout, victim.pid, start_ticks=ticks, pad="x" * (run_dir.MAX_RECORD_BYTES if flaw == "oversized" else 0))
        if flaw == "group-writable":
            path.chmod(0o660)
    code, err = drain_cli(capsys, victim.pid)
    assert code == cli.EXIT_NOT_A_GATEWAY, err
    assert victim.poll() is None


def test_drain_signals_a_verified_gateway_record(default_layout, capsys):
    # the positive case, with a stand-in gateway: a process of ours that announced itself
    # with its own start time (`rtcpool drain` of a real gateway: tests/ops/test_drain.py)
    stand_in = subprocess.Popen(["sleep", VICTIM_S])
    try:
        default_layout.parent.mkdir(mode=0o700)
        default_layout.mkdir(mode=0o700)
        plant(default_layout, stand_in.pid, start_ticks=run_dir.start_ticks(stand_in.pid))
        code, err = drain_cli(capsys)
        assert stand_in.wait(10) == -signal.SIGTERM
        assert code == cli.EXIT_OK and f"draining gateway process {stand_in.pid}" in err, err
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_gateway_serves_on_unannounced_when_the_run_dir_is_not_its_own(default_layout, caplog):
    default_layout.mkdir(parents=True, mode=0o777)
    default_layout.chmod(0o777)
    gateway = SimpleNamespace(gateway_id="g", config=SimpleNamespace(gateway=SimpleNamespace(host="127.0.0.1", port=7860)))
    assert drain._pidfile is None
    drain._announce(gateway)  # no exception: the gateway still serves
    assert drain._pidfile is None and list(default_layout.iterdir()) == []
    assert any("not announced to `rtcpool drain`" in r.getMessage() for r in caplog.records)
