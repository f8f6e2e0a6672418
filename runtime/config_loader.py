"""Reading the deployment configuration (runtime/config.py's models): the file, then
``RTCPOOL_*`` environment variables, then CLI flags, each error naming its key path and
where its value came from. See runtime/config.py for the precedence and the names."""

from __future__ import annotations

import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from runtime.config import (
    CLI_OVERRIDES_ENV,
    CONFIG_ENV,
    DEFAULT_CONFIG,
    ENV_PREFIX,
    OWN_ENV_NAMES,
    SHOWN_INPUT_CHARS,
    Config,
)


class ConfigError(ValueError):
    pass


Origins = dict[tuple[str, ...], str]  # key path -> where its value came from (env var, flag)


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose keys are valid at ``path`` (field names and list indices), if any."""
    model: Any = Config
    for part in path:
        if isinstance(part, int):
            continue
        if (
            not (isinstance(model, type) and issubclass(model, BaseModel))
            or part not in model.model_fields
        ):
            return None
        model = model.model_fields[part].annotation
        while typing.get_origin(model) is not None:  # X | None, list[X], dict[str, X] -> X
            args = [a for a in typing.get_args(model) if a is not type(None)]
            model = args[-1] if args else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _origin(loc: tuple[Any, ...], origins: Origins) -> str:
    path = tuple(str(p) for p in loc)
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            return f" (from {origins[path[:n]]})"
    # an unknown key that only a source of a key inside it made (RTCPOOL_GATEWAYS__PORT)
    inside = sorted({v for k, v in origins.items() if k[: len(path)] == path})
    return f" (from {', '.join(inside)})" if path and inside else ""


def _format(exc: ValidationError, source: str, origins: Origins | None = None) -> str:
    origins = origins or {}
    lines = [f"invalid config {source}:"]
    seen: set[tuple[str, str]] = set()
    for err in exc.errors():
        # a bad dict key comes as (..., key, "[key]"): the key is the place
        loc = tuple(err["loc"][:-1] if err["loc"][-1:] == ("[key]",) else err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            model = _model_at(_parent_fields(loc))
            close = (
                difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
                if model
                else []
            )
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] not in ("value_error", "missing") and not isinstance(
                err.get("input"), dict | list
            ):
                msg += f" (got {_shown(err.get('input'))})"
        # a stream's pool is the top-level pool merged with its own keys: a bad top-level
        # value would otherwise be reported once more under every stream
        if (
            len(loc) > 3
            and loc[0] == "streams"
            and loc[2] == "pool"
            and ("pool." + ".".join(map(str, loc[3:])), msg) in seen
        ):
            continue
        path = ".".join(str(p) if p != "" else "''" for p in loc) or "(root)"
        seen.add((path, msg))
        lines.append(f"  {path}: {msg}{_origin(loc, origins)}")
    return "\n".join(lines)


def _parent_fields(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without its last part and without stream ids (keys of a dict, not fields)."""
    parts = list(loc[:-1])
    if len(parts) >= 2 and parts[0] == "streams":
        del parts[1]
    return tuple(parts)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_INPUT_CHARS else text[: SHOWN_INPUT_CHARS - 3] + "..."


def set_key_path(
    tree: dict[str, Any],
    path: tuple[str, ...],
    value: Any,
    owners: Origins,
    name: str,
    replace: bool = False,
) -> None:
    """Put ``value`` at ``path`` in ``tree``; ``name`` is who sets it (an environment variable,
    a flag) and ``owners`` records who set what. Two sources that disagree on whether a key
    holds a value or a mapping (``pool.prewarm=2`` and ``pool.prewarm.x=1``) are an error
    naming both, in either order: merged, one would raise a bare TypeError or silently
    replace the other. ``replace``: a second source of the same key wins (a later flag);
    otherwise that too is an error (two variables that differ only in case)."""
    dotted = ".".join(path)
    for n in range(1, len(path)):
        if path[:n] in owners:
            raise ConfigError(
                f"{owners[path[:n]]} sets {'.'.join(path[:n])} to a value, and {name} sets "
                f"{dotted} inside it: set one or the other"
            )
    inside = sorted(k for k in owners if len(k) > len(path) and k[: len(path)] == path)
    if inside:
        raise ConfigError(
            f"{name} sets {dotted} to a value, and {owners[inside[0]]} sets "
            f"{'.'.join(inside[0])} inside it: set one or the other"
        )
    if path in owners and not replace and owners[path] != name:
        raise ConfigError(f"{owners[path]} and {name} both set {dotted}: keep one")
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    owners[path] = name


def _unknown_env_name(key: str) -> str:
    rest = key[len(ENV_PREFIX) :]
    hint = ""
    for section in Config.model_fields:
        if rest.lower().startswith(section + "_") and len(rest) > len(section) + 1:
            hint = f"did you mean {ENV_PREFIX}{rest[: len(section)]}__{rest[len(section) + 1 :]}?"
            break
    return (
        f"environment variable {key} is not an rtcpool setting: a key path takes '__' between "
        f"its levels ({hint or f'e.g. {ENV_PREFIX}GATEWAY__PORT'}); the other {ENV_PREFIX}* "
        f"names are {', '.join(OWN_ENV_NAMES)}"
    )


def _env_overrides(environ: dict[str, str], origins: Origins) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    owners: Origins = {}
    for key in sorted(environ):  # sorted: the same environment gives the same error
        if not key.startswith(ENV_PREFIX) or key in OWN_ENV_NAMES:
            continue
        parts = key[len(ENV_PREFIX) :].split("__")
        if len(parts) < 2:
            raise ConfigError(_unknown_env_name(key))
        if not all(parts):
            raise ConfigError(
                f"environment variable {key}: an empty key between '__' (a key path is names "
                f"joined by '__', e.g. {ENV_PREFIX}POOL__PREWARM)"
            )
        # key names are case-insensitive; a stream id is a dict key and keeps its case
        path = tuple(
            p if i == 1 and parts[0].lower() == "streams" else p.lower()
            for i, p in enumerate(parts)
        )
        raw = environ[key]
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {key} is not a YAML value: {exc}") from None
        set_key_path(tree, path, value, owners, key)
    origins.update(owners)
    return tree


def _cli_overrides(environ: dict[str, str], origins: Origins) -> dict[str, Any]:
    raw = environ.get(CLI_OVERRIDES_ENV)
    if not raw:
        return {}
    try:
        tree = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{CLI_OVERRIDES_ENV} is not JSON: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{CLI_OVERRIDES_ENV} must be a JSON object")
    _note_origins(tree, (), "the command line", origins)
    return tree


def _note_origins(
    tree: dict[str, Any], prefix: tuple[str, ...], origin: str, origins: Origins
) -> None:
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            _note_origins(v, (*prefix, str(k)), origin, origins)
        else:
            origins[(*prefix, str(k))] = origin


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """The effective config: file (default ``$RTCPOOL_CONFIG``, else the packaged
    ``runtime/configs/local.yaml``), then ``RTCPOOL_*``
    env vars, then ``rtcpool serve`` flags (``RTCPOOL_CLI_OVERRIDES``), then ``overrides``."""
    environ = dict(os.environ) if environ is None else environ
    if path is None:
        path = environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {source} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping at its top level")
    origins: Origins = {}
    data = _merge(data, _env_overrides(environ, origins))
    data = _merge(data, _cli_overrides(environ, origins))
    if overrides:
        _note_origins(overrides, (), "overrides", origins)
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source, origins)) from None
