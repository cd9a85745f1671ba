"""lowbit's Hydra sweeper plugin (Hydra discovers plugins in the ``hydra_plugins`` package)."""
