"""Multiruns: a job's share of the sweep (job), the sweep's verdict (outcome), unions of grids
(grids), Optuna studies that last (study). ``lowbit.cli.main_job``, Hydra's config (conf/train.yaml,
conf/sweep/) and the sweepers in ``hydra_plugins.lowbit_sweepers`` use them."""
