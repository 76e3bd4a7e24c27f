"""Train SCALE on cached features: ``python pipelines/train.py --features FEATS --out RUN``.

Options: ``--config YAML`` (defaults: configs/scale.yaml's values), ``--epochs N``,
``--seed S``, ``--seeds 0,1,2`` (one run per seed, in RUN/seed-<s>/; what the evaluation's
mean and std are taken over), ``--resume`` (continue RUN from its latest checkpoint), ``--workers N``
(run under Ray Train with N workers; default: one process, no Ray), ``--gpu`` (Ray
workers use a GPU each), ``--ray-address`` (default: $RAY_ADDRESS, else a private local
Ray). Progress and logs go to stderr; the last stdout line is one JSON object
(final_loss, steps, seconds, samples_per_s, importances, ...). Errors follow the convention
of scalemm.cli (exit code 2; 3 when training diverged). The logic lives in fuse/train.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from scalemm import cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(description="Train the SCALE fusion model on cached feature stores.")
    p.add_argument("--features", required=True, type=Path, help="feature directory written by pipelines/extract.py")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, logs, plot)")
    p.add_argument("--config", type=Path, default=None, help="YAML config (see configs/scale.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds: one run each, in OUT/seed-<s>/ (pipelines/evaluate.py takes OUT)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (with --seeds: the seeds not started "
                        "yet start, with --config or else the config of the seeds that have)")
    p.add_argument("--workers", type=int, default=None, help="train under Ray Train with N workers")
    p.add_argument("--gpu", action="store_true", help="with --workers: one GPU per worker")
    p.add_argument("--ray-address", default=None,
                   help="with --workers: Ray cluster address (default: $RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", help="logging level (stderr)")
    return p.parse_args(argv)


def main() -> dict:
    args = parse_args()
    cli.setup_logging(level=args.log_level)
    from scalemm.config import ConfigError
    from scalemm.fuse.config import ScaleConfig
    from scalemm.ray_address import check_ray_address

    cli.check_out_dir(args.out)
    if args.workers is not None and args.ray_address:
        check_ray_address(args.ray_address, "--ray-address")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    cfg = ScaleConfig.from_yaml(args.config) if args.config is not None else None
    if args.seeds is None:
        return run_one(args, cfg, args.out, args.seed)
    if args.seed is not None:
        raise ConfigError("give --seed or --seeds, not both")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    fresh = cfg
    if args.resume and cfg is None:  # seeds not started yet start with the config of those that have
        from scalemm.fuse.train import started_seed_config
        fresh = started_seed_config(args.out)
    runs = [run_one(args, cfg, args.out / f"seed-{s}", s, fresh) for s in seeds]
    return {"out": str(args.out), "seeds": seeds, "runs": runs,
            "final_loss": [r["final_loss"] for r in runs], "seconds": sum(r["seconds"] for r in runs)}


def run_one(args: argparse.Namespace, cfg: "ScaleConfig | None", out: Path, seed: int | None,
            fresh: "ScaleConfig | None" = None) -> dict:
    """One training run (one seed) into ``out``, in this process or under Ray Train; with
    ``--seeds --resume``, a seed not started yet starts with ``fresh``."""
    from scalemm.config import ConfigError
    from scalemm.fuse.train import train

    resume = args.resume
    if resume and args.seeds is not None and not (out / "checkpoints").is_dir():
        resume, cfg = False, fresh  # --seeds --resume: seeds not started yet start now
    if cfg is not None and seed is not None:
        cfg = cfg.replace(seed=seed)  # a resumed seed-<s> run compares its saved config with this one
    kw = dict(resume=resume, epochs=args.epochs, seed=seed, progress=not args.no_progress)
    if args.workers is None:
        return train(args.features, out, cfg, **kw).to_dict()
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    from scalemm.fuse.distributed import train_distributed
    return train_distributed(args.features, out, cfg, workers=args.workers, use_gpu=args.gpu,
                             address=args.ray_address, **kw).to_dict()


if __name__ == "__main__":
    cli.run(main, interrupted="interrupted; continue with --resume and the same --out")
