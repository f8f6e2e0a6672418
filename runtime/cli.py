"""The ``rtcpool`` command.

    rtcpool serve APP.py [--config FILE] [--host H] [--port P]   run an app with a config
    rtcpool config check FILE                                    validate, print the effective config
    rtcpool status [--address auto]                              sessions, slots, pools and workers
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from typing import Any

from runtime import constants as C
from runtime.config import CONFIG_ENV, ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides.setdefault("gateway", {})["host"] = args.host
    if args.port is not None:
        overrides.setdefault("gateway", {})["port"] = args.port
    try:
        cfg = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # the app's own gateway reads the same file and the CLI flags through the environment
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    os.environ["RTCPOOL_GATEWAY__HOST"] = cfg.gateway.host
    os.environ["RTCPOOL_GATEWAY__PORT"] = str(cfg.gateway.port)
    os.environ.setdefault("GRADIO_SERVER_NAME", cfg.gateway.host)
    os.environ.setdefault("GRADIO_SERVER_PORT", str(cfg.gateway.port))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.argv = [args.app]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.app)))
    runpy.run_path(args.app, run_name="__main__")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(cfg.model_dump(), indent=2))
    return 0


def _status(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    try:
        ray.init(address=args.address, namespace=C.RAY_NAMESPACE, log_to_driver=False)
        scheduler = ray.get_actor(C.SCHEDULER_NAME, namespace=C.RAY_NAMESPACE)
    except Exception as exc:
        print(f"no rtcpool deployment reachable at {args.address!r}: {exc}", file=sys.stderr)
        return 1
    status = ray.get(scheduler.status.remote(), timeout=C.RAY_CALL_TIMEOUT_S)
    for eid, ev in status["events"].items():
        limit = "unlimited" if ev["limit"] is None else ev["limit"]
        print(f"{eid}: {ev['leases']}/{limit} slots taken, {ev['idle']} idle, {ev['starting']} starting, replaced {ev['replaced_total']}")
        for w in ev["workers"]:
            print(f"  worker pid {w['pid']} on {w['host']} (node {w['node_id'][:12]})")
    print(f"gateways: {', '.join(status['gateways']) or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rtcpool", description="Live WebRTC media into Python handlers on a Ray worker pool")
    sub = ap.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run an app (a Gradio Blocks script or a FastAPI app using runtime.gateway)")
    serve.add_argument("app")
    serve.add_argument("--config", default=None)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(fn=_serve)
    config = sub.add_parser("config", help="configuration files")
    config_sub = config.add_subparsers(dest="config_cmd", required=True)
    check = config_sub.add_parser("check", help="validate a config file and print the effective config")
    check.add_argument("file")
    check.set_defaults(fn=_config_check)
    status = sub.add_parser("status", help="sessions, slots, pools and workers")
    status.add_argument("--address", default="auto")
    status.set_defaults(fn=_status)
    args = ap.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
