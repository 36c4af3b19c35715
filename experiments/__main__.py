"""``python -m experiments``: list the experiments and run the quick suite;
``python -m experiments NAME [--preset P] [--resume] [--out DIR] [--key value ...]``: run one.

Every run writes ``<out>/<NAME>/<timestamp>/{config.json, metrics.json, report.md, *.png}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

import experiments
from experiments import plan, runner
from unlearnx import parallel, train


def _parse_interrupt(text: str) -> tuple[str, int]:
    phase, _, step = text.rpartition(":")
    if not phase or not step.isdigit():
        raise argparse.ArgumentTypeError(f"--interrupt takes LOOP:STEP, got {text!r}")
    return phase, int(step)


def plan_one(name: str, preset: str, overrides) -> tuple[str, dict]:
    """The cost table of ``name``'s preset (nothing trains, no data is read): ``(markdown, record)``."""
    module = experiments.load(name)
    config = _config(module, name, preset, overrides)
    if name not in plan.PLANS:
        raise SystemExit(f"{name}: no plan yet (--plan covers {', '.join(plan.PLANS)})")
    return train.plan(plan.PLANS[name](config))


def _config(module, name: str, preset: str, overrides):
    """The preset with its overrides, validated whole before any work; a bad one ends the program with a
    one-line message (no traceback)."""
    if preset not in module.PRESETS:
        raise SystemExit(f"{name}: unknown preset {preset!r}; presets: {', '.join(module.PRESETS)}")
    try:
        config = runner.apply_overrides(module.PRESETS[preset], overrides)
        runner.check_config(config)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"{name} [{preset}]: {error}") from None
    return config


def run_one(name: str, preset: str, overrides, *, out: str, resume: bool, interrupt=None) -> str:
    """Runs experiment ``name`` with ``preset`` and ``overrides``; returns its run directory.

    ``interrupt=(loop, step)`` is the testing aid for preemption: the training loop named ``loop`` stops
    once it has run ``step`` steps, exactly as on SIGTERM (:func:`unlearnx.train.stop_at`)."""
    module = experiments.load(name)
    config = _config(module, name, preset, overrides)
    run_dir = runner.run_directory(out, name, config, resume=resume)
    print(f"== {name} [{preset}] -> {run_dir}", flush=True)
    text = None
    if name in plan.PLANS:  # the estimated cost, printed and recorded before any training
        text, record = train.plan(plan.PLANS[name](config))
        print(text, flush=True)
        if parallel.is_main_process():
            runner.write_json(os.path.join(run_dir, "plan.json"), record)
    started = time.perf_counter()
    if interrupt is not None:
        train.stop_at(*interrupt)
    try:
        module.main(config, run_dir)
    except (train.Preempted, KeyboardInterrupt) as stop:
        raise SystemExit(
            f"{name} interrupted ({stop}); rerun with --resume to continue from {run_dir}"
        ) from None
    finally:
        train.clear_stop()
    if text is not None and parallel.is_main_process():  # the report states the cost and memory per device
        with open(os.path.join(run_dir, "report.md"), "a") as handle:
            handle.write(f"\n## Cost estimate (`--plan`, {jax.device_count()} devices)\n\n{text}")
    print(f"== {name} done in {time.perf_counter() - started:.1f} s; report: {run_dir}/report.md", flush=True)
    return run_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", help="experiment to run (omit to run the quick suite)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", default="runs", help="root folder of run directories")
    parser.add_argument("--resume", action="store_true", help="continue the newest run of the same config")
    parser.add_argument("--list", action="store_true", help="list experiments and presets, then exit")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the preset's devices, parameters, FLOPs per step, steps, hours and memory per device, "
        "compiled on abstract shapes without training or reading data, then exit",
    )
    parser.add_argument(
        "--interrupt",
        type=_parse_interrupt,
        default=None,
        help="testing aid: stop (as on SIGTERM) once the training loop LOOP has run STEP steps",
    )
    args, overrides = parser.parse_known_args(argv)
    parallel.initialize_distributed()
    train.install_sigterm_handler()
    print("experiments:")
    for name in experiments.EXPERIMENTS:
        module = experiments.load(name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:<14} presets: {', '.join(module.PRESETS):<30} {summary}")
    if args.list:
        return
    names = [args.name] if args.name else list(experiments.EXPERIMENTS)
    if args.plan:
        for name in names:
            text, _ = plan_one(name, args.preset, overrides)
            print(f"== {name} [{args.preset}] plan on {jax.device_count()} device(s)\n{text}")
        return
    for name in names:
        run_one(name, args.preset, overrides, out=args.out, resume=args.resume, interrupt=args.interrupt)


if __name__ == "__main__":
    main(sys.argv[1:])
