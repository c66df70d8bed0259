"""Read checkpoints that pickle whole `nn.Module` objects, without their code and without running
pickled code.

Some official releases (ultralytics YOLOv5 `.pt`) pickle the model object itself, so
`torch.load(weights_only=True)` refuses them ("Unsupported global: models.yolo.Model") and a plain
`torch.load` would import the authors' code base and execute whatever the pickle asks for.

How this loader reads them, in two layers:

1. A static scan of the pickle (`torch.serialization.get_unsafe_globals_in_checkpoint`, which
   disassembles the opcodes and executes nothing) lists every global the file references beyond
   torch's own tensor/storage allow-list. Anything outside the caller's `allowed` names is refused
   before unpickling, with an error naming it (e.g. `posix.system` from a `__reduce__` exploit).
2. The file is then read by torch's hardened weights-only unpickler, with each allowed class name
   mapped to an inert stand-in (`safe_globals` accepts `(object, "module.Name")` pairs since
   torch 2.5). That unpickler only knows a fixed set of opcodes and only calls allow-listed
   callables, so even a global the scan missed cannot run; a stand-in's construction is
   `object.__new__` and its state is a plain `__dict__` update - no class code at all runs, not
   even torch.nn's (`torch.nn.Conv2d` is a stand-in too, so torch-version skew in module
   attributes cannot break loading).

Why not a hand-written `pickle.Unpickler` with a restrictive `find_class`: it would have to re-implement
torch's zip layout, storage records, byte order and dtype handling, whereas torch's weights-only
path maintains exactly that and is already hardened; the only project-specific part is the
allow-list and the stand-ins.

The result is the unpickled object graph with stand-ins in place of modules; `module_tensors`
walks a stand-in tree (`_parameters`, `_buffers`, `_modules`, the attributes `nn.Module` pickles)
into a flat state dict keyed by module path.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoints import CheckpointError


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint references a global outside the allow-list (refused before unpickling)."""


class PickledObject:
    """Inert stand-in for a pickled class: keeps the unpickled attributes, defines no behaviour.

    A subclass per allowed name records that name in `pickled_name`, so callers can check the
    structure (e.g. which activation a module used) without the original class.
    """

    pickled_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledObject":  # noqa: ARG004 - pickle may pass args
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # never runs class code
        pass

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_name}>"


def _stand_in(qualified_name: str) -> type[PickledObject]:
    short = qualified_name.rsplit(".", 1)[-1]
    return type(short, (PickledObject,), {"pickled_name": qualified_name, "__module__": __name__})


def referenced_globals(path: str | Path) -> list[str]:
    """Globals the checkpoint's pickle references beyond torch's default weights-only allow-list.

    Static: the opcodes are disassembled, nothing is executed. An empty list means a plain
    tensor state dict (`torch.load(weights_only=True)` reads it without help).
    """
    path = Path(path)
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except pickle.UnpicklingError as exc:  # an opcode the scanner (and the loader) does not allow
        raise UnsafeCheckpointError(
            f"refusing checkpoint {path}: its pickle cannot be scanned safely ({_first_line(exc)})"
        ) from None
    except (ValueError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot scan checkpoint {path}: {_first_line(exc)} (not a torch.save zip file?)") from None


def load_pickled_modules(path: str | Path, allowed: Iterable[str]) -> Any:
    """Unpickle a `torch.save` zip whose pickle holds module objects, with every allowed class name
    (fully qualified, e.g. ``"models.common.Conv"``) replaced by an inert `PickledObject` subclass.

    Raises `UnsafeCheckpointError` naming every global outside `allowed` (and outside torch's own
    tensor allow-list) before anything is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass an existing file with --weights")
    allowed = set(allowed)
    found = referenced_globals(path)
    refused = [name for name in found if name not in allowed]
    if refused:
        raise UnsafeCheckpointError(
            f"refusing checkpoint {path}: it references globals outside the allow-list: {', '.join(refused)} "
            "(only the known module classes of this format are accepted; nothing was unpickled)"
        )
    stand_ins = [(_stand_in(name), name) for name in found]
    try:
        # `safe_globals` adds the pairs to torch's allow-list for the duration of this call only.
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError from a corrupt zip record, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None


def iter_modules(root: Any, prefix: str = "") -> Iterator[tuple[str, PickledObject]]:
    """(path, stand-in) for `root` and every sub-module, like `nn.Module.named_modules`.

    A crafted pickle can make a module its own descendant (the memo allows cycles); that is
    refused instead of recursing forever.
    """
    stack: list[tuple[str, Any, tuple[int, ...]]] = [(prefix, root, ())]
    while stack:
        path, node, ancestors = stack.pop()
        if not isinstance(node, PickledObject):
            raise CheckpointError(f"expected a pickled module at {path or '<root>'}, found {type(node).__name__}")
        if id(node) in ancestors:
            raise CheckpointError(f"pickled module tree has a cycle at {path}")
        yield path, node
        children = node.__dict__.get("_modules") or {}
        for name, child in reversed(list(children.items())):  # reversed: pop() keeps file order
            if child is not None:
                stack.append((f"{path}.{name}" if path else str(name), child, (*ancestors, id(node))))


def module_tensors(root: Any) -> dict[str, torch.Tensor]:
    """Flatten a stand-in module tree into `{"path.to.param": tensor}` like `nn.Module.state_dict`.

    Floating tensors become float32 (releases are often FP16); integer buffers such as
    BatchNorm's `num_batches_tracked` keep their dtype. Non-persistent buffers are skipped, as
    `state_dict` skips them.
    """
    out: dict[str, torch.Tensor] = {}
    for path, module in iter_modules(root):
        attrs = module.__dict__
        skip = attrs.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, value in (attrs.get(kind) or {}).items():
                if value is None or (kind == "_buffers" and name in skip):
                    continue
                key = f"{path}.{name}" if path else str(name)
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{key} is a {type(value).__name__}, not a tensor")
                tensor = value.detach()
                out[key] = tensor.float() if tensor.is_floating_point() else tensor.clone()
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
