"""The `edgerec` command: one subcommand per stage of the pipeline.

Subcommands are imported only when run, so `edgerec serve` on an edge box
never imports the training stack. Each stage module provides
`configure(parser)` (its flags, documented with their defaults) and
`run(args) -> int`.

A command that runs until stopped (`serve`) has its SIGTERM, SIGINT and
SIGHUP caught before anything else happens, so a signal sent while it starts
is acted on once it runs instead of killing it (`edgerec.runtime.process`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("edgerec.export.train", "fine-tune the cross-encoder on shop data"),
    "eval": ("edgerec.export.evaluate", "score the test candidates and compare with baselines"),
    "export": ("edgerec.export.pipeline", "train if needed, export, optimize, quantize, validate and bundle"),
    "bundle": ("edgerec.export.bundle", "pack a bundle folder into a verified .tar.gz"),
    "serve": ("edgerec.runtime.server", "serve a bundle over gRPC with dynamic batching"),
    "bench": ("edgerec.benchmarks.run", "benchmark engines offline and the server under load"),
    "bench-gpu": ("edgerec.benchmarks.gpu", "both models in PyTorch CUDA: fp32/fp16/bf16, eager and CUDA graphs"),
    "reliability": ("edgerec.benchmarks.reliability", "overload, soak, fault and access scenarios"),
}
# Commands that run until a signal stops them: their signals are caught from the first instruction.
LONG_RUNNING = frozenset({"serve"})


def _usage() -> str:
    lines = ["usage: edgerec <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`edgerec <command> --help` lists each command's options and defaults."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LONG_RUNNING:
        from edgerec.runtime.process import catch_signals  # stdlib only: installed before the heavy imports

        catch_signals()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"edgerec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"edgerec {name}", description=summary)
    module.configure(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
