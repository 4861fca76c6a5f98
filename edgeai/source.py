"""Load a trained model (factory, TorchScript, ExportedProgram, state_dict, ONNX) with named example inputs."""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgeai.errors import InputSpecError, ModelLoadError
from edgeai.imports import import_callable
from edgeai.specs import (TensorSpec, check_examples, dim_sizes, load_npz, non_finite, parse_input_spec, random_feeds,
                          resize_along)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ModelSource:
    """A model ready to export: the module (None for ONNX), named example inputs and their specs."""

    kind: str                                 # factory, torchscript, exported_program, state_dict,
                                              # pickled_module or onnx
    origin: str                               # what the user passed
    module: Any                               # torch.nn.Module, or None when kind == "onnx"
    example_inputs: dict[str, np.ndarray]     # call order; numpy so the verifier can reuse them
    input_specs: list[TensorSpec]
    onnx_path: Path | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)  # what the loader knows: hub id, task, ...

    def torch_inputs(self) -> dict:
        """Example inputs as fresh torch tensors (a fresh copy each call: never aliased)."""
        import torch
        return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in self.example_inputs.items()}

    @property
    def example_dims(self) -> dict[str, int]:
        """Size of each named (dynamic) dim in the example inputs, e.g. {"batch": 2, "seq": 100}."""
        return dim_sizes(self.input_specs, self.example_inputs)

    def with_dims(self, **sizes: int) -> "ModelSource":
        """The same source with its example inputs resized along the named dims (e.g. batch=1)."""
        feeds = {}
        for spec in self.input_specs:
            arr = self.example_inputs[spec.name]
            for axis, d in enumerate(spec.shape):
                if isinstance(d, str) and d in sizes:
                    arr = resize_along(arr, axis, sizes[d])
            feeds[spec.name] = arr
        return replace(self, example_inputs=feeds)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "origin": self.origin, **dict(self.provenance),
                "inputs": [s.to_dict() for s in self.input_specs], "example_dims": self.example_dims}


def load_model(spec: str, *, inputs: Sequence[str | TensorSpec] | None = None,
               example_inputs: str | Path | Mapping[str, np.ndarray] | None = None,
               arch: str | None = None, trust_pickle: bool = False,
               dynamic_batch: bool = True, task: str | None = None) -> ModelSource:
    """Load `spec` and build its example inputs from `inputs` specs or an `example_inputs` .npz.

    spec: `file.py:factory`, `package.module:factory`, a TorchScript file, a `.pt2`
    ExportedProgram, a state_dict file (with `arch`), a pickled module (with `trust_pickle`),
    or a `.onnx` file; `hf:FOLDER` or `hf:ORG/NAME` (with `task`) is a Hugging Face model (edgeai/hf.py).
    """
    if spec.startswith("hf:"):
        from edgeai.hf import load_hf
        return load_hf(spec, task=task, trust_pickle=trust_pickle, example_inputs=example_inputs, inputs=inputs)
    if task:
        raise ModelLoadError(f"--task is for Hugging Face models (hf:FOLDER or hf:ORG/NAME), not {spec!r}")
    specs = [s if isinstance(s, TensorSpec) else parse_input_spec(s) for s in (inputs or [])]
    kind, module, onnx_path = _load(spec, arch, trust_pickle)
    if kind == "onnx":
        specs = specs or _onnx_input_specs(onnx_path)
    elif module is not None and kind != "exported_program":  # exported programs are inference graphs
        module.eval()
    names = _forward_params(module) if module is not None else None
    feeds, specs = _examples(specs, example_inputs, names, dynamic_batch)
    source = ModelSource(kind, spec, module, feeds, specs, onnx_path)
    if module is not None:
        _check_forward(source)
    return source


def _check_forward(source: ModelSource) -> None:
    """Run the model once on the example inputs so a wrong shape fails here, in the user's terms."""
    import torch

    from edgeai.exporters import output_names
    try:
        with torch.inference_mode():
            outputs = source.module(*source.torch_inputs().values())
    except Exception as e:
        shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape))}:{v.dtype}" for k, v in source.example_inputs.items())
        text = " ".join(str(e).split())[:250]
        raise InputSpecError(f"the model fails on the example inputs ({shapes}): {type(e).__name__}: {text}; "
                             "check the --input shapes and dtypes") from None
    names, leaves = output_names(outputs)
    if not any(isinstance(t, torch.Tensor) for t in leaves):
        got = "None" if outputs is None else f"{type(outputs).__name__} {' '.join(repr(outputs).split())[:60]}"
        raise ModelLoadError(f"the model {source.origin!r} returns {got} from forward() on the example inputs, not a "
                             "tensor; edgeai exports what forward() returns: a tensor, or a tuple, list or dict of "
                             "tensors")
    for name, t in zip(names, leaves):
        bad = non_finite(t.detach().float().cpu().numpy()) if isinstance(t, torch.Tensor) else ""
        if bad:
            raise ModelLoadError(f"the model outputs {bad} on the example inputs "
                                 f"(output {name!r}): check its weights, and give real samples with "
                                 "--example-inputs if they were generated")


# ---------------------------------------------------------------------------- loading

def _load(spec: str, arch: str | None, trust_pickle: bool):
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelLoadError(f"model file {spec!r} does not exist")
        return "onnx", None, path
    if path.is_file():
        return _load_file(path, arch, trust_pickle)
    if _looks_like_factory(spec):
        if arch:
            raise ModelLoadError("--arch is for state_dict files; a factory already returns a model")
        return "factory", call_factory(spec), None
    if path.suffix or "/" in spec or "\\" in spec:
        raise ModelLoadError(f"model file {spec!r} does not exist")
    raise ModelLoadError(f"cannot tell what model {spec!r} is: pass a file (.onnx, .pt2, TorchScript, "
                         "state_dict with --arch) or a factory as 'file.py:function' or 'package.module:function'")


def _looks_like_factory(spec: str) -> bool:
    target, sep, func = spec.rpartition(":")
    return bool(sep and target and func.isidentifier() and not (len(target) == 1 and target.isalpha()))


def resolve_callable(spec: str, what: str = "factory") -> Callable:
    """Import `file.py:name` or `package.module:name` and return the attribute."""
    return import_callable(spec, what, ModelLoadError)


def call_factory(spec: str):
    import torch
    fn = resolve_callable(spec)
    try:
        module = fn()
    except Exception as e:
        raise ModelLoadError(f"factory {spec!r} raised {type(e).__name__}: {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _load_file(path: Path, arch: str | None, trust_pickle: bool):
    import torch

    from edgeai.modelfile import TRUST_HINT, check_graph_module, not_a_model_message
    kind = check_model_file(path, trust_pickle)
    if kind == "pt2":
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            raise ModelLoadError(f"{str(path)!r} is not a loadable ExportedProgram (.pt2): {_first_line(e)}") from None
        if not trust_pickle:
            check_graph_module(path, ep.graph_module)  # again on what torch built, before anything runs it
        return "exported_program", ep.module(), None
    if kind == "torchscript":
        try:
            return "torchscript", torch.jit.load(str(path), map_location="cpu"), None
        except Exception as e:
            raise ModelLoadError(f"{str(path)!r} looks like TorchScript but does not load: {_first_line(e)}") from None
    if kind not in ("pickle", "torch-zip"):
        raise ModelLoadError(not_a_model_message(path, kind))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except ModuleNotFoundError as e:  # a trusted pickle stores its classes by module and name
        raise ModelLoadError(f"{str(path)!r} holds a pickled model whose code is in module {e.name!r}, which "
                             "cannot be imported here; run from the folder that holds it (or add it to "
                             "PYTHONPATH), or save the state_dict and pass --arch") from None
    except AttributeError as e:  # the module imports but no longer has the class (or it was in a script)
        raise ModelLoadError(f"{str(path)!r} holds a pickled model whose class cannot be found: "
                             f"{_first_line(e)}; a pickle stores classes by name: save the state_dict and "
                             "pass --arch file.py:factory") from None
    except Exception as e:  # torch.load raises many types for files that are not its own
        if not trust_pickle and "weights_only" in str(e) and "Unsupported" in str(e):
            raise ModelLoadError(f"{str(path)!r} needs full unpickling, which can run arbitrary code; "
                                 f"{TRUST_HINT}") from None
        raise ModelLoadError(f"{str(path)!r} is a damaged or unknown PyTorch file: {_first_line(e)}") from None
    if isinstance(obj, torch.nn.Module):
        if arch:
            raise ModelLoadError(f"{str(path)!r} holds a whole module; drop --arch")
        return "pickled_module", obj, None
    state = _find_state_dict(obj)
    if state is None:
        raise ModelLoadError(f"{str(path)!r} holds a {type(obj).__name__}, neither a model nor a state_dict")
    if not arch:
        raise ModelLoadError(f"{str(path)!r} is a state_dict (weights only); pass --arch file.py:factory "
                             "to build the model it belongs to")
    module = call_factory(arch)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ModelLoadError(f"weights in {str(path)!r} do not fit --arch {arch!r}: {detail}") from None
    return "state_dict", module, None


def check_model_file(path: Path, trust_pickle: bool = False) -> str:
    """What `path` holds (modelfile.sniff; "pt2" for any .pt2), after refusing a .pt2 or TorchScript file
    whose loading or running could reach files or processes (unless `trust_pickle`). Loads nothing."""
    from edgeai.modelfile import check_pt2, sniff
    kind = sniff(path)
    if kind == "pt2" or (path.suffix.lower() == ".pt2" and kind in ("zip", "unknown")):
        kind = "pt2"
        if not trust_pickle:
            check_pt2(path)  # records torch would unpickle, guard code, operators outside the allowlist
    elif kind == "torchscript" and not trust_pickle:
        from edgeai.torchscript_check import check_torchscript
        check_torchscript(path)  # torch.jit.load runs the archive's __setstate__ methods
    return kind


def _find_state_dict(obj) -> dict | None:
    import torch
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):  # training checkpoints: {"state_dict": ..., "epoch": ...}
        for key in ("state_dict", "model_state_dict", "model", "weights"):
            if key in obj:
                found = _find_state_dict(obj[key])
                if found is not None:
                    return found
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _onnx_input_specs(path: Path) -> list[TensorSpec]:
    from edgeai.runtime.onnx import OnnxSession
    return OnnxSession(path).inputs


# ---------------------------------------------------------------------------- inputs

def _forward_params(module) -> list[str] | None:
    """Names of forward()'s positional parameters, or None if they cannot be read."""
    try:
        if hasattr(module, "forward") and hasattr(module.forward, "schema"):  # TorchScript
            return [a.name for a in module.forward.schema.arguments[1:]]
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError, AttributeError):
        return None
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return None
    return [p.name for p in params]


def _examples(specs: list[TensorSpec], example_inputs, names: list[str] | None,
              dynamic_batch: bool) -> tuple[dict[str, np.ndarray], list[TensorSpec]]:
    if example_inputs is None and not specs:
        raise InputSpecError("no inputs given: pass --input NAME:DIM,DIM,... (one per forward() input) "
                             "or --example-inputs FILE.npz"
                             + (f"; forward() takes {', '.join(names)}" if names else ""))
    if example_inputs is not None:
        arrays = (load_npz(example_inputs, "example inputs") if isinstance(example_inputs, (str, Path))
                  else {k: np.asarray(v) for k, v in example_inputs.items()})
        arrays.pop("labels", None)
        check_examples(arrays)
        if specs:
            _check_names([s.name for s in specs], list(arrays), "--input specs and --example-inputs")
            arrays = {s.name: arrays[s.name] for s in specs}
            specs = [_check_example_fits(s, arrays[s.name]) for s in specs]
        else:
            specs = [_spec_from_array(k, a, dynamic_batch) for k, a in arrays.items()]
        feeds = arrays
    else:
        feeds = random_feeds(specs)
        log.info("example inputs generated from specs: %s", ", ".join(map(str, specs)))
    # numpy defaults to float64; torch models almost always want float32
    for i, spec in enumerate(specs):
        if spec.dtype == "float64" and feeds[spec.name].dtype == np.float64:
            feeds[spec.name] = feeds[spec.name].astype(np.float32)
            specs[i] = replace(spec, dtype="float32")
    if names is not None and list(feeds) != names[:len(feeds)]:
        _check_names(names[:len(feeds)], list(feeds), "forward()")
    return feeds, specs


def _check_names(expected: list[str], got: list[str], what: str) -> None:
    if list(expected) != list(got):
        raise InputSpecError(f"input names {got} do not match {what} parameters {expected} "
                             "(names and order must match)")


def _spec_from_array(name: str, arr: np.ndarray, dynamic_batch: bool) -> TensorSpec:
    if arr.ndim == 0:
        raise InputSpecError(f"example input {name!r} is a scalar; inputs need at least one dimension")
    shape = (("batch",) if dynamic_batch else (arr.shape[0],)) + tuple(arr.shape[1:])
    return TensorSpec(name, shape, str(arr.dtype), {"batch": arr.shape[0]} if dynamic_batch else {})


def _check_example_fits(spec: TensorSpec, arr: np.ndarray) -> TensorSpec:
    if arr.ndim != len(spec.shape) or any(isinstance(d, int) and d != s for d, s in zip(spec.shape, arr.shape)):
        raise InputSpecError(f"example input {spec.name!r} has shape {tuple(arr.shape)}, --input says "
                             f"{','.join(map(str, spec.shape))}")
    sizes = {d: s for d, s in zip(spec.shape, arr.shape) if isinstance(d, str)}
    return replace(spec, dtype=str(arr.dtype), example_sizes=sizes)
