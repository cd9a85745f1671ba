"""Multiruns: a job's share of the sweep (job), the sweep's verdict (outcome), unions of grids
(grids). ``lowbit.cli.main_job`` and Hydra's config (conf/train.yaml, conf/sweep/) use them."""
