"""The ``capsgen`` command line: parse, call the library, print. Nothing else lives here.

    capsgen models                                               (families, capabilities, presets)
    capsgen train capsnet --data fashion-mnist --epochs 1 --out runs/caps [--device auto]
    capsgen train --resume runs/caps [--steps N]
    torchrun --nproc_per_node=2 -m capsgen train capsnet --data digits --steps 50 --out runs/ddp
    capsgen eval runs/caps                                       (every capability the run has)
    capsgen eval samples.npz --data fashion-mnist [--n 10000]    (FID, KID, IS, PR, DC + floor)
    capsgen evaluator --data fashion-mnist                       (train/show the evaluator net)
    capsgen sample runs/cgan --n 1000 --out samples.npz --grid samples.png [--class K]
    capsgen interpolate runs/cgan --out interpolation.png
    capsgen explore runs/caps [--port 8000] [--host 127.0.0.1]  (a local page: sliders on capsules)
    capsgen export runs/cgan --out model.safetensors              (weights only)
    capsgen attack runs/caps --method fgsm|pgd|uap [--eps 8/255] [--n 1000] [--white-box]
    capsgen battle runs/cgan runs/dcgan --n 1000                 (GAM: r_samples, r_test, verdict)
    capsgen semisup runs/cgan --labelled 100,1000 --generated 50000
    capsgen reproduce --list | capsgen reproduce capsulegan --data fashion-mnist --budget 20
    capsgen demo

Every user-facing problem is reported as one line ``capsgen: error: …`` with exit code 2; an
interruption as one line with exit code 130. Building the parser imports no torch, so
``capsgen --help`` and ``capsgen models`` answer at once.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from capsgen.errors import CapsgenError

DEVICE_HELP = "auto (CUDA when available, else CPU) | cpu | cuda | cuda:N (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, listing the valid options."""

    def error(self, message: str):  # noqa: D401 - argparse API
        if message.startswith("unrecognized arguments") or "invalid choice" not in message:
            opts = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
            if opts and "invalid choice" not in message:
                message += f" (valid options for '{self.prog}': {', '.join(opts)})"
        raise CapsgenError(message)


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=DEVICE_HELP)


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace output files that already exist "
                   "(without it an existing file is refused, untouched)")


def build_parser() -> argparse.ArgumentParser:
    from capsgen import __version__
    from capsgen.cli import attack, compare, evaluate, explore, export, generate, models, reproduce, train

    parser = OneLineParser(prog="capsgen", description="Capsule-network generative models.")
    parser.add_argument("--version", action="version", version=f"capsgen {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND")
    parser.subcommands = sub.choices
    for module in (models, train, evaluate, generate, explore, export, attack, compare, reproduce):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # SIGTERM stops capsgen like Ctrl-C (one line, exit 130) outside training too; during training
    # the loop takes both over and stops at the next step boundary.
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if main_thread else None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:
            # Name the options of the sub-command the user typed, not the top level's.
            sub = parser.subcommands.get(args.command, parser) if args.command else parser
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
        if not args.command:
            parser.print_help()
            return 2
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("capsgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except CapsgenError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"capsgen: error: {msg}", file=sys.stderr)
        return 130 if type(exc).__name__ == "Interrupted" else 2
    except Exception as exc:
        # A Ctrl-C that lands while a module is being imported can come back wrapped: Python 3.11
        # re-raises an exception from a class's __set_name__ (torch.fx's dataclasses, during
        # `import torch`) as RuntimeError caused by it. Still an interruption: one line.
        if not _caused_by_interrupt(exc):
            raise
        print("capsgen: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
        if main_thread and old_term is not None:
            if argv is None:
                # The process is on its way out with its work done and written. A Ctrl-C/SIGTERM
                # landing during interpreter teardown (a second or so with torch loaded) must not
                # kill it with -15 or print a traceback. Python resets its own handlers to the
                # default while finalizing but leaves SIG_IGN alone, so ignore both from here on.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            else:
                signal.signal(signal.SIGTERM, old_term)


def _reader_gone() -> int:
    """stdout's reader went away (``capsgen models | head -2``): stop quietly, as a program killed
    by SIGPIPE would. stdout now points at /dev/null, so Python's flush at exit cannot fail again
    and print 'Exception ignored ... BrokenPipeError'."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):   # no real stdout (tests' capture): nothing left to protect
        pass
    return 128 + signal.SIGPIPE


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _leave_process_group() -> None:
    # Only if torch.distributed was imported whole: an interrupt can land while torch is importing.
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:   # cleanup on the way out must not turn one line into a traceback
        pass


def entry() -> None:
    """The ``capsgen`` executable and ``python -m capsgen``: run :func:`main`, exit with its code."""
    try:
        code = main()
    except SystemExit as exc:   # argparse's --help / --version: flush below like any other output
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        sys.stdout.flush()    # what main printed may still sit in the buffer of a pipe
    except BrokenPipeError:
        code = _reader_gone()
    torchrun_worker = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    if torchrun_worker or code == 130:
        # The process has written everything it owns: main() returned, so every `with` and
        # `finally` on the way out has closed its files. Interpreter teardown is then skipped,
        # because it has crashed in two cases here.
        # - A torchrun worker's teardown, with gloo's threads still unwinding, aborted about one
        #   run in ten ("terminate called without an active exception", then a fatal GIL error
        #   while finalizing: 1 of 10 two-process PoE runs, and once in CI).
        # - An interrupted run's teardown aborted too (SIGABRT, "PyThreadState_Get: the function
        #   must be called with the GIL held" while finalizing: once in 4 repetitions of the
        #   random-moment signal test, tests/test_reliability_runs.py).
        #   Under `python -m capsgen` (tests, torchrun) it also died by SIGINT (-2, not 130) once
        #   a Ctrl-C had escaped an exec() of a string: dataclasses and namedtuple run those while
        #   torch imports, and CPython 3.11 keeps a sticky "unhandled KeyboardInterrupt" flag
        #   that Py_RunMain acts on after teardown (once in CI).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
