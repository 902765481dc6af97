"""bornagain: Born-Again Networks (BAN) and Born-Again Multi-task networks (BAM).

The public Python names (imported on first use, so `import bornagain_kd` stays light):

    run_ban, train, glue_teachers, bam             each command as a function (bornagain_kd.api)
    create_model, register_model, list_models      the model registry (bornagain_kd.models)
    born_again_loss, resolve_loss, LOSS_PRESETS    the BAN losses (bornagain_kd.distill.ban_losses)
    classification_target, regression_target       the BAM targets with teacher annealing (bornagain_kd.distill.bam_targets)
    UserError                                      what bad input raises (a ValueError with a one-line message)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"


def installed_version() -> str:
    """The installed distribution's version (bornagain-kd), or __version__ in a source tree never installed."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("bornagain-kd")
    except PackageNotFoundError:
        return __version__

_PUBLIC = {
    "run_ban": "bornagain_kd.api", "train": "bornagain_kd.api", "glue_teachers": "bornagain_kd.api", "bam": "bornagain_kd.api",
    "create_model": "bornagain_kd.models", "register_model": "bornagain_kd.models", "list_models": "bornagain_kd.models",
    "born_again_loss": "bornagain_kd.distill.ban_losses", "resolve_loss": "bornagain_kd.distill.ban_losses",
    "LOSS_PRESETS": "bornagain_kd.distill.ban_losses",
    "classification_target": "bornagain_kd.distill.bam_targets", "regression_target": "bornagain_kd.distill.bam_targets",
    "UserError": "bornagain_kd.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bornagain_kd' has no attribute {name!r}")
