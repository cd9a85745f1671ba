"""Config plumbing shared by train.py, the scripts and the tests: where conf/ is, resolvers."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The folder holding ``conf/``: the repository root for an editable (src-layout) install.

    Found from the package's location, never from the working directory, so that runs land in
    the same outputs/ wherever they are started. LOWBIT_ROOT overrides the search.
    """
    import os

    if os.environ.get("LOWBIT_ROOT"):
        return Path(os.environ["LOWBIT_ROOT"]).resolve()
    for parent in PACKAGE_DIR.parents:
        if (parent / "conf" / "train.yaml").is_file():
            return parent
    return Path.cwd()


CONFIG_DIR = project_root() / "conf"


def chosen_option(group: str) -> str | None:
    """The option Hydra chose for a config group (``model`` -> ``nin``), None outside Hydra.

    Recorded next to the results so that a report can name the model without importing it.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get(group)
    return None if choice in (None, "null") else str(choice)


def start_kind(max_epochs: object, init: object) -> str:
    """How a run starts: "ptq" (``trainer.max_epochs=0``: post-training quantization), "init"
    (training from trained weights, ``init=``) or "scratch". results.json's ``start``, the W&B
    config's and tag's (``${lowbit_start:...}`` in conf/logger/wandb.yaml)."""
    if str(max_epochs) == "0":
        return "ptq"
    return "init" if init not in (None, "", "null", "None") else "scratch"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lowbit_root"):
        OmegaConf.register_new_resolver("lowbit_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("lowbit_start"):
        OmegaConf.register_new_resolver("lowbit_start", start_kind)


register_resolvers()
