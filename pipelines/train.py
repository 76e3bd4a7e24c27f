"""Train SCALE on cached features: ``python pipelines/train.py --features FEATS --out RUN``.

Options: ``--config YAML`` (defaults: configs/scale.yaml's values), ``--epochs N``,
``--seed S``, ``--resume`` (continue RUN from its latest checkpoint), ``--workers N``
(run under Ray Train with N workers; default: one process, no Ray), ``--gpu`` (Ray
workers use a GPU each), ``--ray-address`` (default: $RAY_ADDRESS, else a private local
Ray). Progress and logs go to stderr; the last stdout line is one JSON object
(final_loss, steps, seconds, samples_per_s, importances, ...). User errors end with one
``error: ...`` line and exit code 2 (3 when training diverged). The logic lives in
fuse/train.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the SCALE fusion model on cached feature stores.")
    p.add_argument("--features", required=True, type=Path, help="feature directory written by pipelines/extract.py")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, logs, plot)")
    p.add_argument("--config", type=Path, default=None, help="YAML config (see configs/scale.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--workers", type=int, default=None, help="train under Ray Train with N workers")
    p.add_argument("--gpu", action="store_true", help="with --workers: one GPU per worker")
    p.add_argument("--ray-address", default=None,
                   help="with --workers: Ray cluster address (default: $RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", help="logging level (stderr)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from extract.store import StoreError
    from fuse.checkpoint import CheckpointError
    from fuse.config import ConfigError, ScaleConfig
    from fuse.train import TrainingDiverged, train

    import _cli

    try:
        _cli.check_out_dir(args.out)
        if args.workers is not None and args.ray_address:
            _cli.check_ray_address(args.ray_address, "--ray-address")
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
        cfg = ScaleConfig.from_yaml(args.config) if args.config is not None else None
        kw = dict(resume=args.resume, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
        if args.workers is not None:
            if args.workers < 1:
                raise ConfigError(f"--workers must be >= 1, got {args.workers}")
            from fuse.distributed import train_distributed
            _cli.prepare_ray_driver()
            result = train_distributed(args.features, args.out, cfg, workers=args.workers,
                                       use_gpu=args.gpu, address=args.ray_address, **kw)
        else:
            result = train(args.features, args.out, cfg, **kw)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (StoreError, ConfigError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; continue with --resume --out {args.out}", file=sys.stderr)
        return 130
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
