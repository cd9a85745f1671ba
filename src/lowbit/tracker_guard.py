"""A W&B service that dies mid-run ends the tracking, never the run.

The W&B SDK hands everything a run logs to a service process (``wandb-core``). When that process
is killed (the out-of-memory killer, a node's cleanup, a user's kill), every later W&B call
raises at once (``ConnectionResetError: Connection lost``), and Lightning's next metric log would
end training with a traceback: no test, no measured size, no export, no results.json.

``GuardedWandbLogger`` runs every W&B call, Lightning's and lowbit's own (``guarded``), so that
the first failure prints one warning line, is recorded as the run's ``fault`` (results.json's
``faults``), and turns every later call into nothing; the run goes on to its end. The dead
service's connection is then let go (``release_service``, bounded by ``RELEASE_TIMEOUT_S``): the
process then exits without W&B's exit hook printing a traceback, and a sweep's next job starts a
fresh service. What the service wrote to disk before it died stays in the W&B run folder, for
``wandb sync``; it buffers its writes, so a short run may have left nothing there.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pytorch_lightning.loggers import WandbLogger

from lowbit.errors import one_line

FAULT_KIND = "tracker"  # results.json's faults[].kind for a lost W&B run
# How long letting go of the dead service may take before the run goes on regardless.
RELEASE_TIMEOUT_S = 10.0
# Errors that mean the service process is gone, not that W&B refused a value.
SERVICE_GONE = (ConnectionError, EOFError)
WANDB_LOG_HEADER_BYTES = 7  # a run-*.wandb file opens with ":W&B", a magic and a version byte

T = TypeVar("T")


def describe(error: BaseException) -> str:
    """``Type: message`` on one line."""
    message = one_line(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def run_folder(run: Any) -> str | None:
    """The run's ``offline-run-*`` (or ``run-*``) folder, which ``wandb sync`` uploads; read from
    its settings, so it needs no service."""
    try:
        return str(Path(run.dir).parent)
    except Exception:  # a run that never started, or Lightning's DummyExperiment
        return None


def wrote_to_disk(folder: str | None) -> bool:
    """Whether W&B's transaction log in ``folder`` holds more than its header: the service
    buffers what it writes, and a killed one may leave nothing for ``wandb sync``."""
    if folder is None:
        return False
    logs = Path(folder).glob("run-*.wandb")
    return any(log.stat().st_size > WANDB_LOG_HEADER_BYTES for log in logs)


def warning_line(fault: dict[str, Any], service_gone: bool = True) -> str:
    """The one line a lost tracker prints: what failed, when, what is kept, what to do."""
    what = "the W&B service stopped" if service_gone else "a W&B call failed"
    folder = fault.get("wandb_dir")
    upload = (
        f"`wandb sync {folder}` uploads what W&B wrote before"
        if wrote_to_disk(folder)
        else "W&B wrote nothing of this run to disk"
    )
    return (
        f"lowbit: warning: {what} at step {fault['at_step']} ({fault['error']}); the run goes "
        f"on without W&B and results.json keeps every metric; {upload}"
    )


def release_service(run: Any, timeout: float = RELEASE_TIMEOUT_S) -> None:
    """Let go of the dead service, waiting ``timeout`` seconds at most. ``wandb.teardown``
    unregisters W&B's exit hook (which would print a traceback at exit), clears the service's
    address from the environment and forgets the connection, before it tries to tell the
    service, which then fails; a later ``wandb.init`` (a sweep's next job) starts a new one."""
    import wandb
    from wandb.sdk.lib import module

    def teardown() -> None:
        try:
            wandb.teardown()
        except Exception:  # the goodbye to a dead service: what came before it is what counts
            pass

    thread = threading.Thread(target=teardown, name="lowbit-wandb-release", daemon=True)
    thread.start()
    thread.join(timeout)
    if wandb.run is run:  # run.finish() cannot reach the service to clear it itself
        module.unset_globals()


def guarded_call(name: str) -> Callable[..., None]:
    """A method of ``GuardedWandbLogger`` that runs WandbLogger's ``name`` through its guard."""

    def method(self: GuardedWandbLogger, *args: Any, **kwargs: Any) -> None:
        self.guarded(getattr(super(GuardedWandbLogger, self), name), *args, **kwargs)

    method.__name__, method.__qualname__ = name, f"GuardedWandbLogger.{name}"
    return method


class GuardedWandbLogger(WandbLogger):
    """Lightning's WandbLogger whose W&B calls cannot fail the run (module docstring).

    ``fault`` is None while W&B works; after the first failure, the record results.json keeps:
    ``{"kind": "tracker", "error": ..., "at_step": ..., "wandb_dir": ...}``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fault: dict[str, Any] | None = None
        self._last_step = 0  # the last step logged: where a fault is placed

    @property
    def lost(self) -> bool:
        return self.fault is not None

    @property
    def run(self) -> Any:
        """The W&B run (Lightning's ``experiment``, started on first use); once lost, the run as
        it was, None if it never started: never a new one."""
        return self._experiment if self.lost else self.experiment

    def guarded(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``call(*args, **kwargs)``; None, and the tracker lost, when it raises; nothing at
        all once the tracker is lost."""
        if self.fault is not None:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as error:
            self.lose(error)
            return None

    def lose(self, error: Exception) -> None:
        """Record the fault, say so in one line, let go of the service."""
        run = self._experiment
        self.fault = {
            "kind": FAULT_KIND,
            "error": describe(error),
            "at_step": self._last_step,
            "wandb_dir": run_folder(run) if run is not None else None,
        }
        print(
            warning_line(self.fault, isinstance(error, SERVICE_GONE)), file=sys.stderr, flush=True
        )
        if run is not None:
            release_service(run)

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        if step is not None:
            self._last_step = int(step)
        self.guarded(super().log_metrics, metrics, step)

    # the other calls Lightning makes that reach W&B
    log_hyperparams = guarded_call("log_hyperparams")
    log_table = guarded_call("log_table")
    log_text = guarded_call("log_text")
    log_image = guarded_call("log_image")
    log_audio = guarded_call("log_audio")
    log_video = guarded_call("log_video")
    watch = guarded_call("watch")
    after_save_checkpoint = guarded_call("after_save_checkpoint")
    finalize = guarded_call("finalize")


def guarded(logger: Any, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``call`` through ``logger``'s guard; called as it is for a W&B logger without one (a
    user's own ``_target_``)."""
    if isinstance(logger, GuardedWandbLogger):
        return logger.guarded(call, *args, **kwargs)
    return call(*args, **kwargs)


def tracked_run(logger: Any) -> Any:
    """The W&B logger's run (``GuardedWandbLogger.run``); a logger without a guard's
    ``experiment``."""
    return logger.run if isinstance(logger, GuardedWandbLogger) else logger.experiment


def tracker_faults(loggers: list) -> list[dict[str, Any]]:
    """The faults of the run's trackers, as results.json's ``faults`` lists them."""
    return [
        logger.fault
        for logger in loggers
        if isinstance(logger, GuardedWandbLogger) and logger.fault is not None
    ]


def lost_tracker(results: dict[str, Any]) -> bool:
    """Whether results.json records a lost tracker (the command line's exit status 6)."""
    return any(fault.get("kind") == FAULT_KIND for fault in results.get("faults") or ())
