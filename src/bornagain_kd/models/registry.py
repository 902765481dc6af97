"""A small model registry in the torchvision-reference / timm style.

A family registers a *name pattern* whose ``{fields}`` are numbers:

    @register_model("densenet-bc-{depth}-{growth}")
    def densenet_bc(depth, growth, num_classes, in_channels=3): ...

``create_model("densenet-bc-100-12", num_classes=10)`` matches the pattern,
parses ``depth=100, growth=12`` (integers; ``0.5`` or ``0.75`` parse as floats)
and calls the entry point. Registering the same pattern twice is refused.
"""

from __future__ import annotations

import inspect
import re
from typing import Callable

import torch
from torch import nn

from bornagain_kd.errors import UserError
from bornagain_kd.models.imported import create_imported_model, is_import_path, resolve_factory

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NUMBER = r"(\d+(?:\.\d+)?)"

# pattern -> (compiled regex, field names, entry point); filled at import time
# by the @register_model decorators in each family file.
_MODELS: dict[str, tuple[re.Pattern[str], list[str], Callable[..., nn.Module]]] = {}


def _compile(pattern: str) -> tuple[re.Pattern[str], list[str]]:
    fields = _FIELD.findall(pattern)
    parts = _FIELD.split(pattern)[::2]  # the literal text between fields
    regex = _NUMBER.join(re.escape(p) for p in parts)
    return re.compile(regex), fields


def _shape(pattern: str) -> str:
    # "wrn-{depth}-{width}" and "wrn-{d}-{w}" name the same family
    return _FIELD.sub("{}", pattern.lower())


def register_model(pattern: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(**fields, num_classes, in_channels, **kwargs)`` under ``pattern``."""
    if pattern != pattern.lower():
        raise UserError(f"model pattern {pattern!r} must be lower case (names are matched lower-cased)")
    for known in _MODELS:
        if _shape(known) == _shape(pattern):
            raise UserError(
                f"model pattern {pattern!r} is already registered (as {known!r}); "
                "choose a different family name"
            )

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        regex, fields = _compile(pattern)
        _MODELS[pattern] = (regex, fields, fn)
        return fn

    return decorator


def list_models() -> list[str]:
    """The registered name patterns, sorted, e.g. ``["densenet-bc-{depth}-{growth}", ...]``."""
    return sorted(_MODELS)


def _parse_number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse_model_name(name: str) -> tuple[str, dict[str, int | float]]:
    """Return ``(pattern, fields)`` for a model name, or raise UserError listing the families."""
    key = name.strip().lower()
    for pattern, (regex, fields, _) in _MODELS.items():
        match = regex.fullmatch(key)
        if match:
            return pattern, {f: _parse_number(v) for f, v in zip(fields, match.groups())}
    raise UserError(
        f"unknown model {name!r}; known families: {', '.join(list_models())} "
        "(fill the {fields} with numbers, e.g. 'densenet-bc-100-12', 'wrn-28-10', 'resnet-20'), "
        "or your own factory by import path: mypkg.nets:build_net or path/to/nets.py:build_net"
    )


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the model called ``name`` (e.g. ``"wrn-28-10"``) for ``num_classes`` classes.

    Extra keyword arguments go to the family (``dropout=0.3`` for WRN,
    ``teacher="densenet-bc-90-60"`` for Match families); one the family does
    not take raises UserError naming the ones it does. A name with a colon is a
    user's factory by import path (``mypkg.nets:build_net``, ``nets.py:build_net``;
    see models/imported.py), called with the same arguments.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise UserError(f"in_channels must be a positive integer (3 for RGB, 1 for grey), got {in_channels!r}")
    if is_import_path(name):
        return create_imported_model(name, num_classes, in_channels, **kwargs)
    pattern, fields = parse_model_name(name)
    fn = _MODELS[pattern][2]
    accepted = set(inspect.signature(fn).parameters) - set(fields) - {"num_classes", "in_channels", "name"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UserError(
            f"model {name!r} does not take option(s) {unknown}; "
            f"it takes: {sorted(accepted) if accepted else 'no options'}"
        )
    return fn(**fields, num_classes=num_classes, in_channels=in_channels, name=name, **kwargs)


def model_options(name: str, **kwargs) -> dict:
    """Every option model ``name`` is built with: ``kwargs`` over the family's (or your factory's) defaults.
    Two runs whose options are equal built the same model, however the options were spelled: a WRN made with
    no dropout given and one made with dropout=0.3 (the family's default) are the same."""
    if is_import_path(name):
        fn, fixed = resolve_factory(name), {"num_classes", "in_channels"}
    else:
        pattern, fields = parse_model_name(name)
        fn, fixed = _MODELS[pattern][2], {*fields, "num_classes", "in_channels", "name"}
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                if k not in fixed and p.default is not inspect.Parameter.empty}
    return {**defaults, **kwargs}


def count_parameters(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> int:
    """Number of parameters of ``create_model(name, ...)``, built on the meta
    device so that even WRN-28-20 (146M) costs no memory and milliseconds."""
    with torch.device("meta"):
        model = create_model(name, num_classes, in_channels, **kwargs)
    return parameter_count(model)


def parameter_count(model: nn.Module, *, trainable: bool = False) -> int:
    """Number of parameters of a built model (``trainable``: only those that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
