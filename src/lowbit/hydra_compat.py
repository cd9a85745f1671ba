"""The parts of Hydra that lowbit uses from ``hydra._internal``, Hydra's private package.

Hydra gives no public form of these, and a private module may move in any release: keeping
every such import here means one file to check when hydra-core is upgraded. Checked against
hydra-core 1.3.8. Nothing else in lowbit (the sweeper plugin under ``src/hydra_plugins``
included) or its tests imports ``hydra._internal``.
"""

from __future__ import annotations

# The argument parser that @hydra.main builds (its flags: -m, --config-name, --cfg, ...). The
# CLI's checks read the command line with it, so that they split flags from overrides exactly
# as Hydra will; hydra.main offers no public way to get it.
from hydra._internal.utils import get_args_parser
from hydra.types import HydraContext


def basic_sweeper() -> type:
    """Hydra's basic sweeper class, which the grids sweeper (``hydra_plugins.lowbit_sweepers``)
    subclasses so that batching, multirun.yaml and job numbering stay Hydra's own; Hydra
    registers it as a plugin but exports it nowhere public.

    Looked up at each call, not imported once here: Hydra's plugin scan executes the plugin
    modules again (``load_module``), and the subclass must derive from the class the module
    holds after that, the one its methods' ``super(BasicSweeper, self)`` names."""
    from hydra._internal.core_plugins import basic_sweeper as module

    return module.BasicSweeper


def hydra_context() -> HydraContext:
    """A Hydra context with no config loader and no callbacks, what instantiating a sweeper or
    a launcher outside ``@hydra.main`` needs (the tests compose a preset's sweeper this way).
    ``HydraContext`` is public, but its ``callbacks`` must be an instance of the private
    ``Callbacks`` class, which Hydra exports nowhere public."""
    from hydra._internal.callbacks import Callbacks

    return HydraContext(config_loader=None, callbacks=Callbacks())


__all__ = ["basic_sweeper", "get_args_parser", "hydra_context"]
