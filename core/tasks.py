"""One function per task; each builds only what its task needs."""
from __future__ import annotations

from pathlib import Path

from loguru import logger

from configs import apply_overrides, load_config
from configs.base_config import BaseConfig, ConfigError
from datasets.image_io import ImageError
from datasets.scan import DatasetError
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.dist import broadcast_object, cleanup, init_distributed, set_cpu_threads
from utils.logging import setup_logging
from utils.run_dir import make_run_dir

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, ImageError, FileNotFoundError)


def config_for(args) -> BaseConfig:
    """--config if given, else the config stored in --ckpt, else configs/my_config.py; then overrides."""
    if args.config is None and args.ckpt:
        ckpt = load_checkpoint(args.ckpt, required=("config",))
        cfg = BaseConfig.from_dict(ckpt["config"])
        apply_overrides(cfg, args.overrides)
        return cfg
    return load_config(args.config, args.overrides)


def run_task(args) -> None:
    cfg = config_for(args).validate()
    dist = init_distributed()
    set_cpu_threads(cfg.train.num_threads)
    try:
        out = args.out
        if out is None and args.task == "train" and args.ckpt:
            out = str(Path(args.ckpt).resolve().parent)  # resume continues in its own run dir
        run_dir = make_run_dir(cfg.train.save_dir, f"{cfg.name}_{args.task}" if args.task != "train"
                               else cfg.name, out) if dist.is_main else None
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None))
        setup_logging(run_dir, dist.rank, args.task)
        logger.info(f"task {args.task}, config {cfg.name}, run dir {run_dir}")
        TASK_FUNCS[args.task](cfg, args, dist, run_dir)
    finally:
        cleanup()


def task_train(cfg, args, dist, run_dir: Path) -> None:
    from core.trainer import Trainer
    if dist.is_main:
        from utils.coco_eval import write_json_atomic
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
    Trainer(cfg, dist, run_dir, resume=args.ckpt).fit()


def task_val(cfg, args, dist, run_dir: Path) -> None:
    from core.builders import build_eval_loader, load_weights
    from core.evaluator import Evaluator
    model = load_weights(cfg, args.ckpt, dist.device)
    loader, records = build_eval_loader(cfg, dist, "val")
    Evaluator(cfg, records, dist).run(model, loader, run_dir if dist.is_main else None)
    if dist.is_main:
        logger.info(f"metrics.json, predictions.json and ground_truth.json written to {run_dir}")


def task_predict(cfg, args, dist, run_dir: Path) -> None:
    from core.builders import load_weights
    from core.predictor import Predictor
    model = load_weights(cfg, args.ckpt, dist.device)
    if dist.is_main:
        Predictor(cfg, model).run(cfg.predict.source, run_dir)


def task_debug(cfg, args, dist, run_dir: Path) -> None:
    from core.debugger import draw_assignments_for_config
    if dist.is_main:
        draw_assignments_for_config(cfg, run_dir, args.ckpt)


TASK_FUNCS = {"train": task_train, "val": task_val, "predict": task_predict, "debug": task_debug}
