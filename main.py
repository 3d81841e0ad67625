"""Entry point: python main.py [--config PATH_OR_NAME] [--task TASK] [--ckpt FILE] [--out DIR] [group.field=value ...]
             python main.py --task compare RUN_DIR [RUN_DIR ...]   (run dirs or quoted globs, e.g. 'runs/*')

The task is a config field (cfg.task, default "train"); --task overrides it. Flags and
overrides may come in any order. A positional argument with "=" is an override; any other one is
a run directory, which only --task compare takes. Works the same under torchrun (--nproc_per_node,
--nnodes) and under python -m torch.distributed.launch (its --local-rank argument is accepted).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from configs.validation import TASKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="config file or name under configs/ (default: my_config)")
    p.add_argument("--task", default=None, choices=TASKS, help="overrides cfg.task (default: the config's task)")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint: resume (train) or weights (val/predict/debug/benchmark/export/qat); "
                        "val/predict/benchmark also take an exported .onnx or .tflite file")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>[N])")
    # torch.distributed.launch passes --local-rank=N (older releases --local_rank); torchrun sets LOCAL_RANK.
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="override | run_dir",
                   help="config overrides, e.g. train.epochs=5 assign.method=all_grid; for --task compare also "
                        "the run directories to compare")
    args = p.parse_intermixed_args(argv)
    args.overrides, args.run_dirs = split_positionals(args.overrides)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def split_positionals(values: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, run directories): ``group.field=value`` is an override; anything else, or a path
    that merely holds "=" (``runs/lr=0.1``: a "/" before the "=", a glob such as ``*lr=0.1*``, or an
    existing directory), is a run directory of --task compare."""
    def is_override(v: str) -> bool:
        key = v.split("=", 1)[0].strip()
        return "=" in v and re.fullmatch(r"[A-Za-z_][\w.]*", key) is not None and not os.path.isdir(v)
    return [v for v in values if is_override(v)], [v for v in values if not is_override(v)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from core.tasks import USER_ERRORS, run_task  # heavy imports after --help
    try:
        run_task(args)
    except USER_ERRORS as e:  # a user-facing problem: a clear message, no traceback
        from loguru import logger
        logger.error(f"{type(e).__name__}: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
