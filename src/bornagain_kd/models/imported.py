"""Users' own models, named by import path: ``model.name=mypkg.nets:build_net`` or ``model.name=nets.py:build_net``.

The part before the last ``:`` is an importable module (dotted name, found on ``sys.path``) or a path to a
``.py`` file; the part after it is a callable in that module (a dotted attribute path is allowed:
``nets.py:Factories.small``). It is called as

    factory(num_classes=..., in_channels=..., **model.kwargs)  ->  an nn.Module whose forward maps
    (b, in_channels, h, w) float images to (b, num_classes) logits

Anything that goes wrong (no such module or file, an import that raises, no such attribute, not callable,
a call that raises, a result that is no nn.Module) is one UserError naming the path. The sharing of the
stem and head of cross-architecture students works when the module exposes ``stem`` (its first
nn.Conv2d), ``classifier`` (its last nn.Linear) and ``num_features`` (the classifier's input width), like
every model of the zoo.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from torch import nn

from bornagain_kd.errors import UserError, describe


def is_import_path(name: str) -> bool:
    """``module:attr`` (a registered zoo name never holds a colon)."""
    return ":" in name


def _load_file(path: Path, name: str):
    """Import a .py file under a module name derived from its absolute path (so two files called nets.py
    do not collide, and the same file imported twice is the same module)."""
    resolved = path.resolve()
    module_name = "bornagain_user_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise UserError(f"model.name={name!r}: cannot import {path} as Python (it must be a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's module: any failure is one clear line
        del sys.modules[module_name]
        raise UserError(f"model.name={name!r}: importing {path} failed ({describe(e)}); "
                        f"fix that file so that `python {path}` runs") from None
    return module


def resolve_factory(name: str) -> Callable[..., Any]:
    """The callable that ``name`` (``module:attr`` or ``file.py:attr``) points at."""
    target, _, attr = name.rpartition(":")
    if not target or not attr:
        raise UserError(f"model.name={name!r} is not of the form module:function or path/to/file.py:function")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserError(f"model.name={name!r}: the file {path} does not exist (a path relative to the "
                            "current directory, or an absolute one)")
        module = _load_file(path, name)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise UserError(f"model.name={name!r}: no module named {e.name!r}; install the package, add its folder "
                            "to PYTHONPATH, or give the file's path (nets.py:build_net)") from None
        except Exception as e:  # noqa: BLE001
            raise UserError(f"model.name={name!r}: importing {target} failed ({describe(e)})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"model.name={name!r}: {target} has no attribute {attr!r}; "
                            f"check the name after the ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"model.name={name!r}: {attr} is a {type(obj).__name__}, not a function or class that "
                        "builds the model")
    return obj


def create_imported_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """``factory(num_classes=..., in_channels=..., **kwargs)`` of the import path ``name``, checked."""
    factory = resolve_factory(name)
    try:
        model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as e:
        raise UserError(f"model.name={name!r}: calling it with num_classes, in_channels and model.kwargs "
                        f"{sorted(kwargs)} failed ({describe(e)}); it must accept "
                        "factory(num_classes=..., in_channels=..., **model.kwargs)") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"model.name={name!r}: building the model failed ({describe(e)})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name={name!r} returned a {type(model).__name__}, not a torch.nn.Module: "
                        "the factory must return the model")
    return model
