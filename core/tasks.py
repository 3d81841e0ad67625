"""One function per task; each builds only what its task needs."""
from __future__ import annotations

from pathlib import Path

from loguru import logger

from configs import apply_overrides, load_config
from configs.base_config import BaseConfig, ConfigError
from core.checks import validate
from datasets.image_io import ImageError
from datasets.scan import DatasetError
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.dist import broadcast_object, cleanup, init_distributed, set_cpu_threads
from utils.logging import close_run_log, setup_logging
from utils.run_dir import RunDirError, make_run_dir
from utils.signals import stop_on_signals

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, ImageError, FileNotFoundError, RunDirError)


RUNTIME_TASKS = ("val", "predict", "benchmark")  # the tasks that run an exported .onnx / .tflite file


# Fields of a config that decide where files are written. A config read from a checkpoint or an
# exported model is data from whoever made the file: these fields are not taken from it.
WRITE_PATH_KEYS = ("train.save_dir", "data.cache_dir")


def config_for(args) -> BaseConfig:
    """--config if given, else the config stored in --ckpt (a checkpoint, or an exported model's
    metadata, see ``config_from_data``), else configs/my_config.py; then overrides and --task."""
    from core.deploy.wire import is_runtime_path, read_export_metadata
    if args.config is None and args.ckpt:
        stored = (read_export_metadata(args.ckpt) if is_runtime_path(args.ckpt)
                  else load_checkpoint(args.ckpt, required=("config",)))["config"]
        cfg = apply_overrides(config_from_data(stored, args.ckpt), args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.task is not None:
        cfg.task = args.task
    if is_runtime_path(args.ckpt) and cfg.task not in RUNTIME_TASKS:
        raise ConfigError(f"--task {cfg.task} needs a .pth checkpoint; an exported model ({args.ckpt}) "
                          f"serves --task {', '.join(RUNTIME_TASKS)}")
    return cfg


def config_from_data(stored: dict, source: str) -> BaseConfig:
    """The config stored in a checkpoint or exported model, as data that cannot act as code.

    Its image loader must be a built-in one (a stored import path would run code from the file's
    author), its name must be a plain name (checked by validate), and the fields that decide where
    files are written (``WRITE_PATH_KEYS``) keep this machine's defaults: run directories come from
    --out or ``train.save_dir`` of the command line, never from the file.
    """
    from datasets.loaders import LOADERS
    cfg = BaseConfig.from_dict(stored, strict=False)
    if cfg.data.image_loader not in LOADERS:
        raise ConfigError(f"{source} names data.image_loader={cfg.data.image_loader!r}, which is not a built-in "
                          f"loader ({', '.join(LOADERS)}); a checkpoint is data and cannot import code. Use "
                          "--config with a config file that names the loader")
    defaults = BaseConfig()
    for key in WRITE_PATH_KEYS:
        if cfg.get(key) != defaults.get(key):
            logger.info(f"{source} was made with {key}={cfg.get(key)!r}; using {defaults.get(key)!r} (a "
                        f"checkpoint does not choose where files are written; pass {key}=... to set it)")
            cfg.set(key, defaults.get(key))
    return cfg


def run_task(args) -> None:
    close_run_log()  # nothing of this run (e.g. a config error) goes into an earlier run's log file
    cfg = validate(config_for(args))
    task = cfg.task
    run_dirs = getattr(args, "run_dirs", [])
    if run_dirs and task != "compare":
        raise ConfigError(f"{run_dirs[0]!r} is not an override (group.field=value); only --task compare takes run "
                          f"directories (this is --task {task})")
    dist = init_distributed(timeout_s=60 * cfg.train.dist_timeout_min)
    set_cpu_threads(cfg.train.num_threads)
    try:
        out = args.out
        resume = args.ckpt if task == "train" else None
        if out is None and resume:
            out = str(Path(resume).resolve().parent)  # resume continues in its own run dir
        # Global rank 0 alone chooses (and creates) the run dir; every rank gets its path.
        run_dir = make_run_dir(cfg.train.save_dir, f"{cfg.name}_{task}" if task != "train" else cfg.name,
                               out, resume=resume) if dist.is_main else None
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None))
        setup_logging(run_dir, dist.rank, task)
        logger.info(f"task {task}, config {cfg.name}, run dir {run_dir}")
        TASK_FUNCS[task](cfg, args, dist, run_dir)
    finally:
        cleanup()
    # Done: later code of this process does not write into this run's log. After a failure the file
    # stays attached until the next run, so main's error message is written into it.
    close_run_log()


def task_train(cfg, args, dist, run_dir: Path) -> None:
    """Train (or resume with --ckpt). SIGTERM/SIGINT finish the step, write last.pth and exit with
    128 + the signal number; any other failure is logged with its rank and traceback (each rank's
    log file), then the process exits non-zero."""
    from core.train import NonFiniteLossError, NonFiniteWeightsError, Trainer
    try:
        trainer = Trainer(cfg, dist, run_dir, resume=args.ckpt)
        with stop_on_signals(trainer.request_stop):  # utils/signals.py: flags only, repeatable
            trainer.fit()
    except USER_ERRORS:
        raise
    except (NonFiniteLossError, NonFiniteWeightsError) as e:
        logger.error(f"rank {dist.rank}: {type(e).__name__}: {e}")
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - logged with its traceback, then a non-zero exit
        logger.opt(exception=e).error(f"rank {dist.rank} of {dist.world_size}: training failed: "
                                      f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None
    if trainer.interrupted and trainer.stop_signal is not None:
        raise SystemExit(128 + trainer.stop_signal)


def load_model(cfg, path: str | None, device):
    """The model of --ckpt for val / predict / benchmark: a checkpoint's weights, or the runtime
    model of an exported .onnx / .tflite file."""
    from core.deploy.wire import is_runtime_path
    if is_runtime_path(path):
        from core.deploy.runtime import load_runtime_for
        return load_runtime_for(cfg, path, device)
    from core.weights import load_weights
    return load_weights(cfg, path, device)


def task_val(cfg, args, dist, run_dir: Path) -> None:
    from core.evaluation.evaluator import Evaluator, rect_for
    from core.loaders import build_eval_loader
    from datasets import resolve_class_names
    from utils.model_info import is_runtime_model
    model = load_model(cfg, args.ckpt, dist.device)
    resolve_class_names(cfg)  # COCO data under a --config without them: the json's category ids
    loader = build_eval_loader(cfg, dist, "val", max_images=cfg.eval.max_images, rect=rect_for(cfg, model))
    evaluator = Evaluator(cfg, loader.dataset.records, dist, num_images_total=loader.dataset.split_size)
    metrics = evaluator.run(model, loader, run_dir if dist.is_main else None)
    if not dist.is_main:
        return
    recorded = None
    if not is_runtime_model(model):  # an exported file records no epoch or score
        ckpt = load_checkpoint(args.ckpt, required=())
        recorded = {"epoch": ckpt.get("epoch", "?"), "mAP": ckpt.get("metrics", {}).get("mAP", -1.0)}
    evaluator.show(metrics, run_dir, reference=recorded)
    logger.info(f"evaluation results written to {run_dir}")
    if cfg.eval.benchmark:
        from core.evaluation.benchmark import run_benchmark
        run_benchmark(model, cfg, dist.device, args.ckpt, run_dir)


def task_benchmark(cfg, args, dist, run_dir: Path) -> None:
    """Speed of the checkpoint's model, or of cfg's randomly initialised model without --ckpt."""
    from core.evaluation.benchmark import run_benchmark
    from datasets import resolve_class_names
    from models import build_model
    if not dist.is_main:
        return
    if args.ckpt:
        model = load_model(cfg, args.ckpt, dist.device)
    else:
        resolve_class_names(cfg)
        model = build_model(cfg).eval().requires_grad_(False)
        logger.warning("no --ckpt: timing randomly initialised weights (speed, size and FLOPs do not "
                       "depend on them)")
    run_benchmark(model, cfg, dist.device, args.ckpt, run_dir)


def task_predict(cfg, args, dist, run_dir: Path) -> None:
    from core.evaluation.predictor import Predictor
    model = load_model(cfg, args.ckpt, dist.device)
    if dist.is_main:
        Predictor(cfg, model).run(cfg.predict.source, run_dir)


def task_debug(cfg, args, dist, run_dir: Path) -> None:
    from core.train.dataset_report import report_dataset
    from core.train.debugger import draw_assignments_for_config, draw_samples_for_config
    if not dist.is_main:
        return
    if cfg.debug.mode == "dataset":
        report_dataset(cfg, run_dir)
    elif cfg.debug.mode == "samples":
        draw_samples_for_config(cfg, run_dir)
    else:
        draw_assignments_for_config(cfg, run_dir, args.ckpt)


def task_export(cfg, args, dist, run_dir: Path) -> None:
    """Write the export.formats files of --ckpt into the run dir; check the ONNX file against PyTorch."""
    import torch

    from core.deploy.export import export_model
    from core.deploy.runtime import OnnxModel, output_difference
    from core.weights import load_weights
    if not dist.is_main:
        return
    model = load_weights(cfg, args.ckpt, torch.device("cpu"))
    files = export_model(cfg, model, run_dir)
    for kind, path in files.items():
        size = sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size
        logger.info(f"{kind:12s} {path} ({size / 2**20:.1f} MB)")
    if "onnx" in files:
        diff = output_difference(model, OnnxModel(files["onnx"]))
        why = (" (export.hardswish changes the activations)" if cfg.export.hardswish
               else " (FP16 weights)" if cfg.export.half else "")
        logger.info(f"check: {files['onnx'].name} vs PyTorch on a random input: max abs diff boxes "
                    f"{diff['boxes']:.2e} px, scores {diff['scores']:.2e}{why}")


def task_compare(cfg, args, dist, run_dir: Path) -> None:
    """Training runs side by side (the positional run directories): core/evaluation/compare.py."""
    from core.evaluation.compare import compare_runs
    if dist.is_main:
        compare_runs(getattr(args, "run_dirs", []), run_dir)


def task_qat(cfg, args, dist, run_dir: Path) -> None:
    """Quantisation-aware fine-tuning of --ckpt (core/deploy/qat.py)."""
    from core.deploy.qat import run_qat
    run_qat(cfg, args, dist, run_dir)


TASK_FUNCS = {"train": task_train, "val": task_val, "predict": task_predict, "debug": task_debug,
              "benchmark": task_benchmark, "export": task_export, "qat": task_qat, "compare": task_compare}
