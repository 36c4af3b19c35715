"""What every experiment shares: presets and ``--key value`` overrides of a frozen config, the run
directory ``runs/<name>/<timestamp>/`` (reused by ``--resume``) and the JSON/Markdown writers."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import shutil
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from unlearnx import models

__all__ = [
    "apply_overrides",
    "check_config",
    "build_model",
    "kept_result",
    "run_directory",
    "timed",
    "write_json",
    "write_outputs",
]


def _parse(text: str, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        return _parse(text, next(a for a in args if a is not type(None)), name)
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_parse(part, item, name) for part in text.split(",") if part.strip())
    if annotation is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--{name}: expected true/false, got {text!r}")
    try:
        return annotation(text)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--{name}: cannot read {text!r} as {annotation}") from error


def apply_overrides(config: Any, pairs: Sequence[str]) -> Any:
    """Applies ``["--key", "value", ...]`` (or ``--key=value``) to a frozen dataclass config.

    Values are parsed by the field's annotation; tuples are comma-separated (``--seeds 0,1,2``).
    """
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    tokens = list(pairs)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            raise ValueError(f"expected --key value, got {token!r}")
        key, _, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not value:
            if not tokens:
                raise ValueError(f"--{key} needs a value")
            value = tokens.pop(0)
        if key not in fields:
            raise ValueError(f"unknown option --{key}; known: {', '.join(sorted(fields))}")
        changes[key] = _parse(value, hints[key], key)
    return dataclasses.replace(config, **changes)


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with one config field by the rules every experiment shares, or ``None``."""
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if isinstance(number, float) and not math.isfinite(number):
            return f"must be finite, got {value!r}"
    if name.endswith("seeds") and isinstance(value, tuple):
        if not value:
            return "must name at least one seed"
        if len(set(value)) != len(value) or any(not isinstance(s, int) or s < 0 for s in value):
            return f"must be distinct non-negative ints, got {value!r}"
    counts = ("batch_size", "steps", "num_tasks", "width", "seq_len")
    if isinstance(value, int) and not isinstance(value, bool) and name.endswith(counts) and value < 1:
        return f"must be >= 1, got {value!r}"
    if name.endswith(("epochs", "_size", "budget")) and isinstance(value, int) and value < 0:
        return f"must be >= 0, got {value!r}"
    if name.endswith("sparsities") and any(not 0.0 <= s < 1.0 for s in numbers):
        return f"must lie in [0, 1), got {value!r}"
    return None


def check_config(config: Any) -> None:
    """Validates a whole config before any work: every field by the shared rules (finite numbers, seeds
    non-empty, distinct and non-negative, batch sizes and step counts ≥ 1, epochs and sizes ≥ 0, sparsities
    in [0, 1)), then the experiment's own ``validate()`` method if its config has one.

    Raises:
      ValueError: naming every bad field and its value.
    """
    problems = [
        f"--{field.name} {problem}"
        for field in dataclasses.fields(config)
        if (problem := _field_problem(field.name, getattr(config, field.name))) is not None
    ]
    if problems:
        raise ValueError("; ".join(problems))
    if hasattr(config, "validate"):
        config.validate()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray | jax.Array):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` as indented JSON (dataclasses, NumPy scalars and arrays converted; NaN → null),
    atomically: a process killed mid-write leaves the previous file (or none), never a truncated one."""
    text = json.dumps(_jsonable(value), indent=2, sort_keys=True, allow_nan=False) + "\n"
    temporary = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall seconds)``, waiting for the result's device work to finish."""
    started = time.perf_counter()
    result = jax.block_until_ready(fn(*args, **kwargs))
    return result, time.perf_counter() - started


def kept_result(path: str, compute: Callable[[], Any], *, checkpoints: str) -> tuple[Any, float, bool]:
    """``(result, seconds, kept)`` of one unit of work kept in the JSON file ``path``: read from there if an
    earlier attempt finished it (``kept``), else ``compute()``d, timed and stored there atomically; then its
    ``checkpoints`` folder is removed. Fresh and kept results are both read back from the JSON, so they have
    the same values and types."""
    kept = os.path.exists(path)
    if not kept:
        started = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - started
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, {"result": result, "seconds": seconds})
    shutil.rmtree(checkpoints, ignore_errors=True)
    with open(path) as handle:
        stored = json.load(handle)
    return stored["result"], stored["seconds"], kept


def _read_config(path: str) -> Any:
    """A run's saved config, or ``None`` (with a warning naming the file) when it cannot be read."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        print(f"--resume: skipping {path}: unreadable ({error})", file=sys.stderr)
        return None


def _shared_timestamp() -> str:
    """The run's timestamp, taken on process 0 and broadcast so every host of a pod uses one directory."""
    nanoseconds = np.int64(datetime.datetime.now().timestamp() * 1e9)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        nanoseconds = np.int64(multihost_utils.broadcast_one_to_all(nanoseconds))
    moment = datetime.datetime.fromtimestamp(int(nanoseconds) / 1e9)
    return moment.strftime("%Y%m%d-%H%M%S-%f")


def write_outputs(run_dir: str, metrics: Any, timing: Any, report: str) -> None:
    """Writes ``metrics.json`` (seed-determined values), ``timing.json`` (wall times) and ``report.md``, and
    prints the report: on process 0 only (every host of a pod computes the same values)."""
    if jax.process_index() != 0:
        return
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    write_json(os.path.join(run_dir, "timing.json"), timing)
    with open(os.path.join(run_dir, "report.md"), "w") as handle:
        handle.write(report)
    print(report)


def run_directory(root: str | os.PathLike, name: str, config: Any, *, resume: bool) -> str:
    """``root/name/<timestamp>/`` with ``config.json`` written; with ``resume``, the newest earlier run of
    the same config (so its checkpoints are picked up), or a new directory (with a warning) if none."""
    base = os.path.join(os.fspath(root), name)
    wanted = _jsonable(config)
    if resume and os.path.isdir(base):
        for entry in sorted(os.listdir(base), reverse=True):
            config_path = os.path.join(base, entry, "config.json")
            if os.path.exists(config_path) and _read_config(config_path) == wanted:
                return os.path.join(base, entry)
    if resume:
        print(f"--resume: no earlier run of this config under {base}; starting a new run", file=sys.stderr)
    directory = os.path.join(base, _shared_timestamp())
    os.makedirs(directory, exist_ok=True)
    if jax.process_index() == 0:
        write_json(os.path.join(directory, "config.json"), config)
    return directory


@functools.cache
def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, width: int, channels: tuple[int, ...]
) -> models.Model:
    """One model object per architecture (so compiled train/eval steps are reused): ``width`` is the MLP's
    hidden width (two layers), the CNN's dense width or the ResNet's / VGG's base width; ``channels`` the
    CNN's stages."""
    kwargs = {
        "mlp": {"hidden": (width, width)},
        "cnn": {"channels": channels, "hidden": width},
        "resnet18": {"width": width},
        "resnet50": {"width": width},
        "vgg19": {"width": width},
    }.get(name, {})
    return models.get(name, input_shape, num_classes, **kwargs)
