"""The ``ibprune`` command: ``demo``, ``compress``, ``sweep`` and ``run``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback

from ibprune.recipe import SECTIONS, Job

EXAMPLES = """examples:
  ibprune demo --out runs/demo
  ibprune compress --model torchvision:resnet18 --weights r18.pth --num-classes 10 \\
      --data path/to/imagefolder --input-size 64 --macs 0.5 --out runs/r18
  ibprune sweep --model ibprune.demo:pretrained_digits_net --data digits --macs 0.7,0.5,0.35 --out runs/sweep
  ibprune run pipelines/digits.toml
"""


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.7,0.5, got {text!r}") from None


def _job_flags(c: argparse.ArgumentParser, budget_type, budget_help: str) -> None:
    """The flags of ``compress`` and ``sweep``: one per field of a ``Job`` (its help, kind and default)."""
    budget = c.add_mutually_exclusive_group(required=True)
    order = list(SECTIONS)  # model, data, budget, train, output: as a recipe reads
    for f in sorted(dataclasses.fields(Job), key=lambda f: order.index(f.metadata["section"])):
        if f.name in ("macs", "params"):
            budget.add_argument(f"--{f.name}", type=budget_type,
                                help=budget_help.format("MACs" if f.name == "macs" else "parameters"))
        elif f.name == "latency":
            if budget_type is float:  # a sweep runs over MACs or params budgets only
                budget.add_argument("--latency", type=float, help=f.metadata["help"])
        else:
            _setting_flag(c, f)


def _setting_flag(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    """``--name-with-dashes`` for one ``Job`` field: its help, kind and default (none: a required flag)."""
    flag, kind, help = "--" + f.name.replace("_", "-"), f.metadata["kind"], f.metadata["help"]
    if f.default is dataclasses.MISSING:
        parser.add_argument(flag, type=kind, required=True, help=help)
    elif kind is bool:
        parser.add_argument(flag, action="store_true", default=f.default, help=help)
    else:
        shown = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(flag, type=kind, default=f.default, help=help + shown)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ibprune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Compress a pretrained PyTorch classifier: learned information-bottleneck gates pick the "
                    "channels to remove, torch-pruning removes them, the slim model is fine-tuned, exported to "
                    "ONNX, checked with onnxruntime and benchmarked against the original.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="compress a small digits CNN end to end (needs no data; ~1 minute on a CPU)",
                       description="Train a small residual CNN on scikit-learn's 8x8 digits for a few seconds, "
                                   "compress it to <= 50%% of its MACs, export, benchmark, print the report.")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")

    c = sub.add_parser("compress", help="compress a model given by flags",
                       description="Compress a model to a MACs, params or latency budget. Writes report.json, "
                                   "report.md, information.json/.png, deployed.png (with validation data), model.onnx, "
                                   "original.onnx and compressed.pt into --out.")
    _job_flags(c, float, "keep at most this fraction of the {}, e.g. 0.5")
    w = sub.add_parser("sweep", help="compress to several budgets from one gate phase; Pareto plot",
                       description="Compress a model to each of several budgets: the explore half of the gate "
                                   "phase runs once and is shared. Writes one compress output folder per budget "
                                   "and sweep.json, sweep.md, sweep.png (accuracy against MACs and latency).")
    _job_flags(w, _fractions, "comma-separated fractions of the {} to keep, e.g. 0.7,0.5,0.35,0.25")

    r = sub.add_parser("run", help="run a pipeline recipe (TOML)",
                       description="Run a declarative recipe: sections [model], [data], [budget], [train], "
                                   "[output] whose keys are the flags of 'ibprune compress'. A list of budgets "
                                   "(macs = [0.7, 0.5]) runs a sweep.")
    r.add_argument("recipe", help="path to a .toml recipe, e.g. pipelines/digits.toml")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoints in its output folder")
    return p


class _Stdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each line (a test may replace it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stdout(quiet: bool) -> None:
    """The library logs to ``logging.getLogger("ibprune")``; the command shows its lines (``--quiet``: warnings
    only) on standard output, once however often ``main`` runs in a process."""
    logger = logging.getLogger("ibprune")
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ibprune`` console script."""
    args = _parser().parse_args(argv)
    from ibprune.core import distributed

    joined = distributed.init_from_env()  # under torchrun: one rank of many; rank 0 speaks for all
    verbose = not args.quiet and distributed.is_writer()
    _log_to_stdout(not verbose)
    try:
        if args.command == "demo":
            from ibprune.demo import DEMO

            job = Job(model="ibprune.demo:pretrained_digits_net", data="digits", out=args.out,
                      device=args.device, **DEMO)
        elif args.command in ("compress", "sweep"):
            fields = {f.name for f in dataclasses.fields(Job)}
            job = Job(**{k: v for k, v in vars(args).items() if k in fields})
        else:
            from ibprune.recipe import load_recipe

            job = dataclasses.replace(load_recipe(args.recipe), resume=args.resume)
        from ibprune.recipe import run_job

        result = run_job(job, verbose=verbose)
        if verbose:
            print(f"[ibprune] wrote {job.out}/" + ("sweep.md, sweep.json, sweep.png and one folder per budget"
                                                  if isinstance(job.macs or job.params, list) else
                                                  "report.md, report.json, model.onnx, original.onnx, compressed.pt"))
        return 0 if result is not None else 1
    except KeyboardInterrupt:
        print("ibprune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; --debug for the traceback
        if args.debug:
            traceback.print_exc()
        flags = ", ".join("--" + s.replace("_", "-") for s in getattr(err, "settings", ()))
        rank = f"rank {distributed.rank()}: " if distributed.active() else ""
        print(f"ibprune: {rank}error: {err}" + (f" (flag: {flags})" if flags else ""), file=sys.stderr)
        return 1
    finally:
        if joined:
            distributed.finish()


if __name__ == "__main__":
    sys.exit(main())
