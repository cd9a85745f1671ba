"""lowbit's entry point: `python train.py [group=option ...] [key=value ...]` (Hydra).

Every job of the command line is checked first (one line and exit 2 on bad input); then Hydra
runs the job(s) and ``lowbit.train.run`` does the work. ``resume=RUN_DIR`` is expanded first
into that run's own overrides and folder (``lowbit.resume``).
"""

import sys

import hydra
from omegaconf import DictConfig

import lowbit.config  # noqa: F401  (registers the config resolvers before Hydra composes)
from lowbit.cli import expand_resume, main_job, preflight


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return main_job(cfg)


if __name__ == "__main__":
    sys.argv[1:] = expand_resume(sys.argv[1:])  # resume=RUN_DIR: that run's overrides and folder
    preflight(sys.argv[1:])
    main()
