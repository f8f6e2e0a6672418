"""Where this host's gateway processes announce themselves to ``rtcpool drain``, and when a
record there is trusted enough to signal the process it names.

One JSON file per gateway process (like nginx's pid file) in a directory per user:
``$RTCPOOL_RUN_DIR``, else ``$XDG_RUNTIME_DIR/rtcpool-<uid>/gateways``, else
``/tmp/rtcpool-<uid>/gateways``. ``/tmp`` is everyone's: another user can make
``/tmp/rtcpool-<uid>`` first, world-writable, and fill it with records naming any pid, which
``rtcpool drain`` would then SIGTERM (issue 20 item 16). So:

* the directory is created 0700, every level rtcpool makes; one that exists must be a real
  directory (no symlink), owned by this user and writable by nobody else, or it is refused
  (:class:`UnsafeRunDir`, naming it and the fix): the gateway serves on unannounced, with
  one warning, and ``rtcpool drain`` fails with the reason;
* a record is read only as a regular file (no symlink) of this user, writable by no one
  else, at most ``MAX_RECORD_BYTES``;
* it names a process only with the process's start time (``/proc/PID/stat``, clock ticks
  since boot), which the gateway wrote for itself: a pid that is gone, was reused by another
  process, belongs to another user or was made up is never signalled. The signal goes
  through a pidfd opened before the last check, so the pid cannot be reused in between.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from runtime import constants as C

RUN_DIR_MODE = 0o700  # this user's alone: a record there is this user's word
RECORD_MODE = 0o600
UNSAFE_MODE_BITS = 0o022  # group- or world-writable: someone else may plant records
MAX_RECORD_BYTES = 4096  # a gateway's record is ~200 bytes; a bigger file is none of ours
DEFAULT_BASE = "/tmp"  # when XDG_RUNTIME_DIR is unset (containers, cron)
RUN_DIR_LEAF = "gateways"
STAT_START_TIME_FIELD = 21  # /proc/PID/stat after the ")" of the command: field 22, starttime


class UnsafeRunDir(Exception):
    """The run directory is not this user's alone: nothing in it is trusted or written."""


@dataclass(frozen=True)
class GatewayRecord:
    """One gateway process, as it announced itself."""

    pid: int
    start_ticks: int  # the process's start time, clock ticks since boot: who the pid is
    gateway_id: str
    host: str
    port: int
    started_at: float  # wall clock, for a reader

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> GatewayRecord:
        data = json.loads(text)
        return cls(
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            gateway_id=str(data["gateway_id"]),
            host=str(data["host"]),
            port=int(data["port"]),
            started_at=float(data["started_at"]),
        )


def run_dir() -> Path:
    """This user's directory of live gateway processes (one JSON file per process)."""
    explicit = os.environ.get(C.RUN_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_RUNTIME_DIR") or DEFAULT_BASE
    return Path(base) / f"rtcpool-{os.getuid()}" / RUN_DIR_LEAF


def _owned_levels(directory: Path) -> list[Path]:
    """The levels of the run dir that are rtcpool's to make and to check: the explicit dir,
    or the default's ``rtcpool-<uid>`` and its ``gateways`` (the base above is the system's)."""
    if os.environ.get(C.RUN_DIR_ENV):
        return [directory]
    return [directory.parent, directory]


def secure_run_dir(create: bool) -> Path | None:
    """The run dir, checked (and with ``create``, made 0700 where missing); None when it does
    not exist and ``create`` is false. Raises :class:`UnsafeRunDir`."""
    directory = run_dir()
    levels = _owned_levels(directory)
    if create:
        directory.parent.mkdir(parents=True, exist_ok=True, mode=RUN_DIR_MODE)  # the system's levels above, if missing
        for level in levels:
            with contextlib.suppress(FileExistsError):
                level.mkdir(mode=RUN_DIR_MODE)
    for level in levels:
        try:
            st = os.lstat(level)
        except FileNotFoundError:
            if create:
                raise UnsafeRunDir(f"{level} vanished while it was made") from None
            return None
        _check_dir(level, st)
    return directory


def _check_dir(level: Path, st: os.stat_result) -> None:
    fix = f"remove it (or set {C.RUN_DIR_ENV} to a directory of your own, mode 700)"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeRunDir(f"{level} is not a directory (a symlink or a file): refusing it; {fix}")
    if st.st_uid != os.getuid():
        raise UnsafeRunDir(f"{level} belongs to uid {st.st_uid}, not to this user ({os.getuid()}): refusing it; {fix}")
    if st.st_mode & UNSAFE_MODE_BITS:
        raise UnsafeRunDir(
            f"{level} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): refusing it; "
            f"`chmod 700 {level}` after checking its files, or {fix}"
        )


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), if it is a live process of this user."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command may hold spaces and parentheses: the fields follow its last ")"
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return int(fields[STAT_START_TIME_FIELD - 2]) if fields[0] != "Z" else None
    except (IndexError, ValueError):
        return None


def write_record(record: GatewayRecord) -> Path:
    """Announce this process (raises UnsafeRunDir, OSError)."""
    directory = secure_run_dir(create=True)
    assert directory is not None
    path = directory / f"{record.pid}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, RECORD_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(record.to_json())
    return path


def this_process_record(gateway_id: str, host: str, port: int) -> GatewayRecord:
    pid = os.getpid()
    return GatewayRecord(pid, start_ticks(pid) or 0, gateway_id, host, port, time.time())


def _read_record(path: Path) -> GatewayRecord | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # a symlink (ELOOP), gone, unreadable
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & UNSAFE_MODE_BITS:
            return None
        if st.st_size > MAX_RECORD_BYTES:
            return None
        try:
            record = GatewayRecord.from_json(f.read(MAX_RECORD_BYTES).decode())
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
    return record if path.name == f"{record.pid}.json" else None


def gateway_records() -> list[GatewayRecord]:
    """The live gateway processes of this host, as announced and verified (records of
    processes gone removed). Raises UnsafeRunDir."""
    directory = secure_run_dir(create=False)
    if directory is None:
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        record = _read_record(path)
        if record is None:
            continue  # not ours, or not a record: left alone, never trusted
        if start_ticks(record.pid) != record.start_ticks:
            with contextlib.suppress(OSError):
                path.unlink()  # its process is gone (or the pid is another's now)
            continue
        found.append(record)
    return found


def signal_gateway(record: GatewayRecord, sig: int) -> bool:
    """Send ``sig`` to the process of ``record`` if it is still that process; whether sent."""
    try:
        fd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd (an old kernel): the check and the kill are a moment apart
        fd = -1
    try:
        # checked after the pidfd is open: the fd holds this very process, reuse or not
        if start_ticks(record.pid) != record.start_ticks:
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(record.pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


__all__ = [
    "GatewayRecord",
    "UnsafeRunDir",
    "gateway_records",
    "run_dir",
    "secure_run_dir",
    "signal_gateway",
    "start_ticks",
    "this_process_record",
    "write_record",
]
