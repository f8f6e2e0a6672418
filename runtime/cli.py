"""The ``rtcpool`` command.

    rtcpool serve APP.py [--config FILE] [--host H] [--port P] [--address RAY]
                         [--ice-host-address IP ...] [--set KEY.PATH=VALUE ...]
    rtcpool config check [FILE]      validate; print the effective config (file + RTCPOOL_* env;
                                     no FILE: $RTCPOOL_CONFIG, else the packaged local.yaml)
    rtcpool status [--address RAY] [--namespace NS] [--config FILE] [--json]
                                     nodes, and per node the workers; slots per stream; sessions
    rtcpool token [--stream ID] [--ttl SECONDS] [--subject S] [--config FILE]
                                     print a join token signed with the secret in the
                                     environment variable gateway.auth.secret_env names

``serve`` flags beat ``RTCPOOL_*`` variables, which beat the file. The app runs in this
process and builds its gateway from ``load_config()``, which reads the flags back from
``RTCPOOL_CLI_OVERRIDES`` (runtime/config.py). Then ``serve`` serves what the file left at
module level (serve_globals): a Gradio Blocks, a FastAPI/Starlette app, a Stream or Gateway.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import runpy
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any, cast

import yaml

from runtime import constants as C
from runtime.config import CLI_OVERRIDES_ENV, CONFIG_ENV, ENV_PREFIX
from runtime.config_loader import ConfigError, Origins, load_config, set_key_path
from runtime.control.messages import SchedulerStatus, status_json
from runtime.guard.auth import (
    JOIN_SECRET_ENV,
    JOIN_TOKEN_TTL_S,
    AuthConfigError,
    mint_join_token,
    read_secret,
)
from workers.process.loader import record_app_file

EXIT_OK = 0
EXIT_UNREACHABLE = 1  # no Ray cluster or no rtcpool scheduler at the address
EXIT_BAD_CONFIG = 2
EXIT_SERVER_FAILED = 3  # the HTTP server did not start (the port is taken, ...)
EXIT_NOTHING_TO_SERVE = 4  # `serve`: the app file leaves no Blocks, app, Stream or Gateway
EXIT_NO_SECRET = 5  # `token`: the secret's environment variable is unset or too short
EXIT_DRAIN_TIMEOUT = 6  # `drain`: a gateway process was still running when the wait ended
EXIT_UNSAFE_RUN_DIR = 7  # `drain`: the run directory is not this user's alone (runtime/ops/run_dir.py)
EXIT_NOT_A_GATEWAY = 8  # `drain PID`: a named pid is no announced gateway process of this user
DRAIN_WAIT_S = C.DRAIN_TIMEOUT_S + 30.0  # `drain`: the default drain, plus its sessions' closes
ASGI_APP_NAME = "app"  # of several ASGI apps in a file, `serve` serves this one (uvicorn's habit)
SHORT_ID_CHARS = 12  # node ids are 56 hex characters; this many tell them apart in a listing
# `status`: a cluster address that takes no TCP connection within this is down
STATUS_CONNECT_TIMEOUT_S = 5.0
DEFAULT_STATUS_ADDRESS = "auto"  # `status` without an address: the cluster of this host


def _set_path(tree: dict[str, Any], dotted: str, value: Any, owners: Origins, name: str) -> None:
    parts = tuple(dotted.split("."))
    if not all(parts):
        raise ConfigError(
            f"--set {dotted!r}: a key path is names joined by dots, e.g. pool.prewarm"
        )
    # a later flag wins over an earlier one for the same key; a value and a key inside it is
    # an error naming both flags
    set_key_path(tree, parts, value, owners, name, replace=True)


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the ``serve`` flags set (``--set`` first: a named flag wins)."""
    overrides: dict[str, Any] = {}
    owners: Origins = {}
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. pool.prewarm=2")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not YAML: {exc}") from None
        _set_path(overrides, key.strip(), value, owners, f"--set {item}")
    flags = {
        "gateway.host": ("--host", args.host),
        "gateway.port": ("--port", args.port),
        "ray.address": ("--address", args.address),
        "gateway.ice_host_addresses": ("--ice-host-address", args.ice_host_address),
    }
    for dotted, (flag, value) in flags.items():
        if value is not None:
            _set_path(overrides, dotted, value, owners, flag)
    return overrides


def _serve(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.app):
        print(f"rtcpool serve: no app file {args.app!r}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        overrides = serve_overrides(args)
        # validated here, with the env, so a bad flag fails before the app is imported
        environ = {**os.environ, CLI_OVERRIDES_ENV: json.dumps(overrides)}
        cfg = load_config(args.config, environ=environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    # the app's gateway calls load_config() itself: hand it the same file and flags
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    os.environ[CLI_OVERRIDES_ENV] = json.dumps(overrides)
    # Gradio's launch() reads its address from these; the config decides it
    os.environ["GRADIO_SERVER_NAME"] = cfg.gateway.host
    os.environ["GRADIO_SERVER_PORT"] = str(cfg.gateway.port)
    if cfg.ray.embedded:  # a cluster keeps Ray's token auth (docs/deployment.md)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    where = cfg.ray.address or "a local Ray started here"
    print(
        f"rtcpool: serving {args.app} on http://{cfg.gateway.host}:{cfg.gateway.port} (Ray: {where})",
        file=sys.stderr,
    )
    try:
        app_globals, served_itself = run_app_file(args.app)
        return serve_globals(args.app, app_globals, cfg, served_itself=served_itself)
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it shut down on, once its lifespan (and so the
        # gateways' aclose) has run: a stop asked for, not a failure
        print("rtcpool: stopped", file=sys.stderr)
        return EXIT_OK


def run_app_file(app_path: str) -> tuple[dict[str, Any], bool]:
    """Run the app file as ``python app.py`` would (as ``__main__``, its folder first on
    sys.path, itself as argv); its globals, and whether it served itself (_servers_started).
    The file is recorded as the one this process serves first: the handler classes it defines
    say they live in "__main__", which in this process is the console script, and a worker
    must re-import the app file, not the script (workers/process/loader.py)."""
    record_app_file(app_path)
    sys.argv = [app_path]
    sys.path.insert(0, os.path.dirname(os.path.abspath(app_path)))
    with _servers_started() as started:
        app_globals = runpy.run_path(app_path, run_name="__main__")
    return app_globals, started[0] > 0


@contextlib.contextmanager
def _servers_started() -> Iterator[list[int]]:
    """Count the uvicorn servers that start while the app file runs. An app that serves
    itself (``demo.launch()``, ``uvicorn.run`` in its ``__main__`` block) returns from the
    file only when its server has stopped: serving its app again then would be wrong. Every
    way of serving there goes through ``uvicorn.Server.startup``, Gradio's launch() too."""
    import uvicorn

    started = [0]
    original = uvicorn.Server.startup  # checked against uvicorn 0.55.0 (test_patched_internals.py)

    async def startup(self: Any, *args: Any, **kwargs: Any) -> Any:
        started[0] += 1
        return await original(self, *args, **kwargs)

    uvicorn.Server.startup = startup  # type: ignore[method-assign]
    try:
        yield started
    finally:
        uvicorn.Server.startup = original  # type: ignore[method-assign]


def serve_globals(app_path: str, app_globals: dict[str, Any], cfg: Any, served_itself: bool = False) -> int:
    """Serve what the app file left in its globals, with the config's host and port:

    * a Gradio Blocks launched with ``prevent_thread_lock``: wait on it;
    * the app served itself and stopped (see _servers_started): done;
    * a FastAPI/Starlette app (``app`` if there are several): start every rtcpool gateway
      the file made (its own, its streams', the Gradio one) and serve the app with uvicorn
      on uvloop, the gateways closing with the app's lifespan;
    * else a Blocks never launched: ``launch()`` it (its streams' gateway starts there);
    * else a Stream or Gateway: as for an app, on a FastAPI app of its own;
    * else nothing to serve: say so, exit EXIT_NOTHING_TO_SERVE.
    """
    from runtime.front.gateway import Gateway
    from runtime.stream import Stream

    blocks = _gradio_blocks(app_globals)
    for name, demo in blocks:
        server = getattr(demo, "server", None)
        thread = getattr(server, "thread", None)
        if thread is not None and thread.is_alive():
            print(f"rtcpool: {app_path} launched {name} without blocking: serving until it stops", file=sys.stderr)
            demo.block_thread()
            return EXIT_OK
    if served_itself:
        return EXIT_OK
    streams = [(n, v) for n, v in app_globals.items() if isinstance(v, Stream)]
    gateways = _unique([v.gateway for _, v in streams] + [v for _, v in app_globals.items() if isinstance(v, Gateway)] + _gradio_gateway())
    apps = [(n, v) for n, v in app_globals.items() if _is_asgi_app(v)]
    if len(apps) > 1:
        named = [(n, v) for n, v in apps if n == ASGI_APP_NAME]
        if not named:
            print(
                f"rtcpool serve: {app_path} has several apps ({', '.join(n for n, _ in apps)}): "
                f"name the one to serve {ASGI_APP_NAME!r}",
                file=sys.stderr,
            )
            return EXIT_NOTHING_TO_SERVE
        apps = named
    if apps:
        name, app = apps[0]
        if not gateways:
            print(f"rtcpool: no rtcpool gateway among {app_path}'s globals: serving {name} as it is", file=sys.stderr)
        return _serve_asgi(app, gateways, cfg)
    if blocks:
        name, demo = blocks[0]
        others = [g for g in gateways if not any(g is gg for gg in _gradio_gateway())]
        if others:
            print(
                f"rtcpool: launching {name}; the Stream/Gateway objects of {app_path} are not part "
                "of it (mount them on the Blocks' app, or serve them from an app of their own)",
                file=sys.stderr,
            )
        else:
            print(f"rtcpool: launching {name}", file=sys.stderr)
        demo.launch(server_name=cfg.gateway.host, server_port=cfg.gateway.port)
        return EXIT_OK
    if gateways:
        if len(gateways) > 1:
            print(
                f"rtcpool serve: {app_path} made {len(gateways)} gateways and no app: their routes would "
                "clash on one app. Put every stream on one gateway (Stream(..., gateway=first.gateway))",
                file=sys.stderr,
            )
            return EXIT_NOTHING_TO_SERVE
        from fastapi import FastAPI

        from runtime.stream import bind_lifespan

        app = FastAPI(title="rtcpool")
        bind_lifespan(app, gateways[0])
        gateways[0].mount(app)
        return _serve_asgi(app, gateways, cfg)
    print(
        f"rtcpool serve: {app_path} leaves nothing to serve: no Gradio Blocks, FastAPI/Starlette app, "
        "Stream or Gateway among its module-level names. Make one there, e.g. `demo = gr.Blocks()`, "
        "`app = FastAPI()` with `gateway.mount(app)`, or `stream = Stream(handler, ...)` "
        "(from runtime.stream import Stream)",
        file=sys.stderr,
    )
    return EXIT_NOTHING_TO_SERVE


def _serve_asgi(app: Any, gateways: list[Any], cfg: Any) -> int:
    import uvicorn

    from runtime.stream import bind_lifespan, close_with_app

    for gateway in gateways:
        if len(gateways) == 1:
            bind_lifespan(app, gateway)
        else:
            # several gateways on one app (its own routes decide which serves what): each
            # closes with the app's lifespan
            close_with_app(app, gateway)
        # now, not in the lifespan: a cluster that cannot be joined fails before the port
        # opens, and the workers pre-warm while uvicorn starts
        gateway.start()
    from runtime.front.http_server import uvicorn_options

    # connections, header time, header and WebSocket message sizes bounded (gateway.http)
    bounds = uvicorn_options(cfg.gateway.http, exempt_loopback=cfg.gateway.limits.exempt_loopback)
    server = uvicorn.Server(
        uvicorn.Config(app, host=cfg.gateway.host, port=cfg.gateway.port, loop="uvloop", lifespan="on", **bounds)
    )
    server.run()  # SIGINT/SIGTERM: a graceful shutdown, the lifespan closes the gateways
    return EXIT_OK if server.started else EXIT_SERVER_FAILED


def _is_asgi_app(value: Any) -> bool:
    try:
        from starlette.applications import Starlette
    except ImportError:
        return False
    return isinstance(value, Starlette) and not _is_gradio_app(value)


def _is_gradio_app(value: Any) -> bool:
    # Gradio's own App (a FastAPI) is built by launch(): serving it bare would skip Gradio's start-up
    gradio_routes = sys.modules.get("gradio.routes")
    return gradio_routes is not None and isinstance(value, gradio_routes.App)


def _gradio_blocks(app_globals: dict[str, Any]) -> list[tuple[str, Any]]:
    gradio = sys.modules.get("gradio")  # an app that never imported Gradio has no Blocks
    if gradio is None:
        return []
    return [(n, v) for n, v in app_globals.items() if isinstance(v, gradio.Blocks)]


def _gradio_gateway() -> list[Any]:
    """The process-wide gateway of the app's Gradio streams, if it has any."""
    serving = sys.modules.get("gradio_ext.serving")
    if serving is None or not serving.has_streams():
        return []
    return [serving.get_gateway()]


def _unique(items: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if not any(item is s for s in seen):
            seen.append(item)
    return seen


def _config_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    applied = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and "__" in k)
    if applied:
        print(f"(with {', '.join(applied)} from the environment)", file=sys.stderr)
    print(json.dumps(cfg.model_dump(), indent=2))
    return EXIT_OK


# --- status ----------------------------------------------------------------------------------


def collect_status(
    status: SchedulerStatus | Mapping[str, Any] | None, nodes: list[dict[str, Any]]
) -> dict[str, Any]:
    """One view of a deployment: every Ray node with the rtcpool workers on it (busy ones
    carry a session), and each stream's slots. ``nodes`` is ``ray.nodes()``; ``status``
    the scheduler's (or its JSON form), None when there is no scheduler."""
    scheduler_status = status_json(status)
    events = (scheduler_status or {}).get("events", {})
    media_by_node: dict[str, list[dict[str, Any]]] = {}
    for m in (scheduler_status or {}).get("media", []):
        media_by_node.setdefault(m.get("node_id") or "", []).append(m)
    by_node: dict[str, list[dict[str, Any]]] = {}
    for event_id, ev in events.items():
        for w in ev["workers"]:
            by_node.setdefault(w["node_id"], []).append(
                {"event_id": event_id, "pid": w["pid"], "busy": bool(w.get("busy"))}
            )
    view_nodes = []
    for n in nodes:
        resources = dict(n.get("Resources", {}))
        view_nodes.append(
            {
                "node_id": n["NodeID"],
                "host": n.get("NodeManagerHostname", ""),
                "ip": n.get("NodeManagerAddress", ""),
                "alive": bool(n.get("Alive")),
                "head": C.HEAD_NODE_RESOURCE in resources,
                "resources": {k: v for k, v in resources.items() if not k.startswith("node:")},
                "workers": by_node.pop(n["NodeID"], []),
                "media": media_by_node.pop(n["NodeID"], []),
            }
        )
    for node_id, workers in by_node.items():  # workers on a node Ray no longer lists
        view_nodes.append(
            {
                "node_id": node_id,
                "host": "",
                "ip": "",
                "alive": False,
                "head": False,
                "resources": {},
                "workers": workers,
                "media": media_by_node.pop(node_id, []),
            }
        )
    return {
        "scheduler": scheduler_status is not None,
        "nodes": view_nodes,
        "events": {
            eid: {k: v for k, v in ev.items() if k != "workers"}
            | {"sessions": sum(1 for w in ev["workers"] if w.get("busy"))}
            for eid, ev in events.items()
        },
        "leases": (scheduler_status or {}).get("leases", 0),
        "sessions": (scheduler_status or {}).get("sessions", []),
        "gateways": (scheduler_status or {}).get("gateways", []),
    }


def format_status(view: dict[str, Any]) -> str:
    lines = []
    for n in view["nodes"]:
        state = "alive" if n["alive"] else "DEAD"
        role = " head" if n["head"] else ""
        res = ", ".join(
            f"{k} {_amount(k, v)}"
            for k, v in sorted(n["resources"].items())
            if k != "object_store_memory"
        )
        lines.append(
            f"node {n['node_id'][:SHORT_ID_CHARS]}{role} {n['host']} ({n['ip']}) {state}: {res}"
        )
        media = n.get("media", [])
        if media:
            lines.append(f"  {len(media)} media process(es)")
        for m in sorted(media, key=lambda m: (m["in_app"], m["pid"] or 0)):
            where = "the app's process" if m["in_app"] else f"beside {m['front_id']}"
            cpu = "" if m.get("cpu_percent") is None else f", CPU {m['cpu_percent']:.0f}%, loop lag {m['loop_lag_ms']:.0f} ms"
            lines.append(f"    pid {m['pid']} ({where}): {m['sessions']} session(s){cpu}")
        busy = sum(1 for w in n["workers"] if w["busy"])
        lines.append(f"  {len(n['workers'])} worker(s), {busy} in a session")
        for w in sorted(n["workers"], key=lambda w: (w["event_id"], w["pid"])):
            lines.append(f"    {w['event_id']}: pid {w['pid']} {'busy' if w['busy'] else 'idle'}")
    if not view["scheduler"]:
        lines.append("no rtcpool scheduler in this cluster (no gateway has started)")
        return "\n".join(lines)
    lines.append("streams (slots are global across gateways):")
    for eid, ev in view["events"].items():
        limit = "unlimited" if ev["limit"] is None else ev["limit"]
        line = f"  {eid}: {ev['leases']}/{limit} slots taken, {ev['idle']} idle, {ev['starting']} starting, replaced {ev['replaced_total']}"
        if ev.get("queue") or ev.get("admitted"):
            line += f", {ev.get('queue', 0)} waiting ({ev.get('admitted', 0)} admitted)"
        if ev.get("unplaceable"):
            line += f"; {ev['unplaceable']}"
        elif ev.get("last_error"):
            line += f"; last error: {ev['last_error']}"
        lines.append(line)
    lines.append(f"sessions: {len(view['sessions'])}")
    for row in sorted(view["sessions"], key=lambda r: (r["event_id"], -r["age_s"])):
        how = f", {row['transport']}" if row.get("transport") else ""
        streaming = "" if row.get("streaming_s") is None else f", streaming {row['streaming_s']:.0f} s"
        lines.append(
            f"  {row['lease']} {row['event_id']} via {row['gateway_id']}: pid {row['pid']} on node "
            f"{(row['node_id'] or '?')[:SHORT_ID_CHARS]}{how}, leased {row['age_s']:.0f} s ago{streaming}"
        )
    lines.append(f"gateways: {len(view['gateways'])} ({', '.join(view['gateways']) or 'none'})")
    return "\n".join(lines)


def _amount(name: str, value: float) -> str:
    if name == "memory":
        return f"{value / 2**30:.1f} GiB"
    return f"{value:g}"


def _reachable(address: str) -> str:
    """Why ``host:port`` takes no TCP connection ("" if it does). ray.init would retry an
    address that is down for minutes; ``auto`` is Ray's to resolve."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return ""
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=STATUS_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return str(exc) or type(exc).__name__
    return ""


def status_target(args: argparse.Namespace) -> tuple[str, str]:
    """The cluster address and namespace ``status`` looks at: the flags, else the config
    file's (``--config``: the deployment's own file), else ``auto`` and the default namespace."""
    address, namespace = args.address, args.namespace
    if args.config:
        cfg = load_config(args.config)
        if address is None and not cfg.ray.embedded:
            address = cfg.ray.address
        namespace = namespace or cfg.ray.namespace
    return address or DEFAULT_STATUS_ADDRESS, namespace or C.RAY_NAMESPACE


def _status(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        address, namespace = status_target(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    down = _reachable(address)
    if down:
        print(f"no Ray cluster reachable at {address!r}: {down}", file=sys.stderr)
        return EXIT_UNREACHABLE
    import ray

    try:
        ray.init(
            address=address,
            namespace=namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except Exception as exc:
        print(f"no Ray cluster reachable at {address!r}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        try:
            scheduler = ray.get_actor(C.SCHEDULER_NAME, namespace=namespace)
            # (ray.get's stubs read an actor call's untyped ref as a list of refs)
            status = cast("SchedulerStatus | None", ray.get(scheduler.status.remote(), timeout=C.RAY_CALL_TIMEOUT_S))
        except ValueError:  # no such named actor: Ray is up, no gateway has started
            status = None
        view = collect_status(status, ray.nodes())
    finally:
        ray.shutdown()
    print(json.dumps(view, indent=2) if args.json else format_status(view))
    return EXIT_OK if view["scheduler"] else EXIT_UNREACHABLE


# --- token -----------------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    env_name = cfg.gateway.auth.secret_env
    try:
        secret = read_secret(env_name)
        token = mint_join_token(secret, stream_id=args.stream, ttl_s=args.ttl, subject=args.subject)
    except AuthConfigError as exc:
        print(f"rtcpool token: {exc}", file=sys.stderr)
        return EXIT_NO_SECRET
    except ValueError as exc:
        print(f"rtcpool token: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(token)
    return EXIT_OK


# --- drain -----------------------------------------------------------------------------------


def _drain(args: argparse.Namespace) -> int:
    """SIGTERM to this host's gateway processes (or those named), then wait for them. Only
    processes that announced themselves in this user's run directory, checked to be those
    very processes, are signalled: a named pid that is not one is refused, never signalled."""
    from runtime.ops import drain, run_dir

    try:
        found = drain.gateway_processes()
    except run_dir.UnsafeRunDir as exc:
        print(f"rtcpool drain: {exc}", file=sys.stderr)
        return EXIT_UNSAFE_RUN_DIR
    known = {r.pid: r for r in found}
    refused = [pid for pid in args.pid if pid not in known]
    for pid in refused:
        print(
            f"rtcpool drain: {pid} is not a gateway process of this user announced in {run_dir.run_dir()}: not signalled",
            file=sys.stderr,
        )
    records = [known[pid] for pid in args.pid if pid in known] if args.pid else found
    if not records and not refused:
        print(f"rtcpool drain: no gateway process runs on this host (none announced in {run_dir.run_dir()})", file=sys.stderr)
        return EXIT_OK
    for r in records:
        print(f"rtcpool drain: draining gateway process {r.pid} on {r.host}:{r.port}", file=sys.stderr)
    alive = drain.drain_processes(records, args.wait)
    if alive:
        print(f"rtcpool drain: still running after {args.wait:g} s: {', '.join(map(str, alive))}", file=sys.stderr)
        return EXIT_DRAIN_TIMEOUT
    if refused:
        return EXIT_NOT_A_GATEWAY
    print("rtcpool drain: every gateway process has exited", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="rtcpool", description="Live WebRTC media into Python handlers on a Ray worker pool"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser(
        "serve", help="run an app (a Gradio Blocks script or a FastAPI app using runtime.front.gateway)"
    )
    serve.add_argument("app")
    serve.add_argument(
        "--config", default=None, help=f"config file (default: ${CONFIG_ENV}, else the embedded default local.yaml)"
    )
    serve.add_argument("--host", default=None, help="gateway.host")
    serve.add_argument("--port", type=int, default=None, help="gateway.port")
    serve.add_argument(
        "--address",
        default=None,
        help="ray.address: 'auto', 'host:port' or 'ray://host:port' joins a cluster",
    )
    serve.add_argument(
        "--ice-host-address",
        action="append",
        default=None,
        metavar="IP",
        help="gateway.ice_host_addresses (repeat for several)",
    )
    serve.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY.PATH=VALUE",
        help="any config key, e.g. --set pool.prewarm=2 (repeatable)",
    )
    serve.set_defaults(fn=_serve)
    config = sub.add_parser("config", help="configuration files")
    config_sub = config.add_subparsers(dest="config_cmd", required=True)
    check = config_sub.add_parser(
        "check", help="validate a config file and print the effective config"
    )
    check.add_argument(
        "file", nargs="?", default=None,
        help=f"config file (default: ${CONFIG_ENV}, else the embedded default local.yaml)",
    )
    check.set_defaults(fn=_config_check)
    status = sub.add_parser("status", help="nodes, workers and sessions per node, slots per stream")
    status.add_argument(
        "--address",
        default=None,
        help=f"the Ray cluster: 'auto' or 'host:port' (default: the --config file's, else {DEFAULT_STATUS_ADDRESS})",
    )
    status.add_argument(
        "--namespace",
        default=None,
        help=f"the deployment's ray.namespace (default: the --config file's, else {C.RAY_NAMESPACE})",
    )
    status.add_argument(
        "--config", default=None, help="the deployment's config file: its ray.address and ray.namespace"
    )
    status.add_argument("--json", action="store_true", help="print the view as JSON")
    status.set_defaults(fn=_status)
    token = sub.add_parser(
        "token",
        help="print a join token (gateway.auth.mode: join_token) signed with the secret in the environment",
    )
    token.add_argument("--stream", default=None, metavar="ID", help="valid for this stream only (default: any)")
    token.add_argument(
        "--ttl", type=float, default=JOIN_TOKEN_TTL_S, metavar="SECONDS", help=f"lifetime (default {JOIN_TOKEN_TTL_S:g})"
    )
    token.add_argument("--subject", default=None, metavar="S", help="who it is for (the app's user id)")
    token.add_argument(
        "--config",
        default=None,
        help=f"the deployment's config file: its gateway.auth.secret_env (default variable: {JOIN_SECRET_ENV})",
    )
    token.set_defaults(fn=_token)
    drain_cmd = sub.add_parser(
        "drain",
        help="drain this host's gateway processes: no new streams, live ones end by gateway.drain_timeout_s, then exit",
    )
    drain_cmd.add_argument("pid", nargs="*", type=int, help="these processes only (default: every gateway process of this host)")
    drain_cmd.add_argument(
        "--wait", type=float, default=DRAIN_WAIT_S, metavar="SECONDS", help=f"how long to wait for them to exit (default {DRAIN_WAIT_S:g})"
    )
    drain_cmd.set_defaults(fn=_drain)
    args = ap.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
