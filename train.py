"""lowbit's entry point: `python train.py [group=option ...] [key=value ...]` (Hydra).

Every job of the command line is checked first (one line and exit 2 on bad input); then Hydra
runs the job(s) and ``lowbit.train.run`` does the work.
"""

import sys

import hydra
from omegaconf import DictConfig

import lowbit.config  # noqa: F401  (registers the config resolvers before Hydra composes)
from lowbit.cli import main_job, preflight


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return main_job(cfg)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()
