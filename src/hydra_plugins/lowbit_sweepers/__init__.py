"""lowbit's Hydra sweeper plugins, grids and optuna (Hydra discovers plugins in the
``hydra_plugins`` package)."""
