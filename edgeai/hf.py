"""Hugging Face models as a ModelSource: a save_pretrained folder or a cached hub id, inputs from Optimum."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edgeai.errors import InputSpecError, MissingDependencyError, ModelLoadError
from edgeai.extras import install_command
from edgeai.specs import TensorSpec

if TYPE_CHECKING:  # source.py imports this module lazily
    from edgeai.source import ModelSource

log = logging.getLogger(__name__)

PREFIX = "hf:"
# Optimum's dynamic axes that stay dynamic, under edgeai's dim names; every other axis Optimum marks
# dynamic (image height/width, channels, mel bins) is fixed at the config's size: the model's
# position embeddings or feature extractor only accept that size
DIM_NAMES = {"batch_size": "batch", "sequence_length": "seq"}
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class HFModelRef:
    """Where a Hugging Face model's files are: a local folder, and the hub id/revision it came from."""

    folder: Path
    model_id: str            # the hub id, or the folder as given
    revision: str | None     # the cached snapshot's commit (hub ids only)
    weights: str             # the weights file transformers will load


def is_hf_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def resolve(spec: str, trust_pickle: bool = False) -> HFModelRef:
    """`hf:FOLDER` or `hf:ORG/NAME[@REVISION]` -> the folder holding config.json and the weights.

    A hub id is looked up in the local Hugging Face cache; it is downloaded only when the
    user's Hugging Face settings allow it (HF_HUB_OFFLINE unset).
    """
    folder, model_id, revision = resolve_folder(spec)
    _check_folder(folder, model_id)
    return HFModelRef(folder, model_id, revision, _weights_file(folder, model_id, trust_pickle))


def resolve_folder(spec: str) -> tuple[Path, str, str | None]:
    """(local folder, model id, cached revision) of `hf:FOLDER` or `hf:ORG/NAME[@REVISION]`."""
    name = spec[len(PREFIX):] if is_hf_spec(spec) else spec
    if not name:
        raise ModelLoadError("empty Hugging Face model: write hf:FOLDER or hf:ORG/NAME")
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder, name, None
    repo, _, rev = name.partition("@")
    if not _HUB_ID.match(repo) or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"Hugging Face model folder {name!r} does not exist (and it is not a hub id "
                             "like org/name)")
    folder, revision = _from_cache(repo, rev or None)
    return folder, repo, revision


def _from_cache(repo: str, revision: str | None) -> tuple[Path, str]:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise MissingDependencyError(f"hf: models need the Hugging Face extra; run: {install_command('hf')}") from None
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        path = Path(snapshot_download(repo, revision=revision, local_files_only=offline,
                                      allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]))
    except LocalEntryNotFoundError:
        how = ("downloads are off (HF_HUB_OFFLINE=1)" if offline else "it could not be downloaded")
        raise ModelLoadError(f"Hugging Face model {repo!r} is not in the local cache and {how}; download it "
                             f"first (huggingface-cli download {repo}) or pass its folder as hf:PATH") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelLoadError(f"Hugging Face model {repo!r} could not be fetched: {_one_line(e)}") from None
    return path, path.name  # the snapshot folder is named after its commit


def _check_folder(folder: Path, name: str) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{name!r} has no config.json; pass a folder written by save_pretrained")
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{name!r}: config.json is not valid JSON ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{name!r}: config.json must hold a JSON object")
    if data.get("auto_map"):
        raise ModelLoadError(f"{name!r} needs its own Python code (trust_remote_code: config.json has auto_map), "
                             "which edgeai never runs; export it with a model class that transformers ships")


def _weights_file(folder: Path, name: str, trust_pickle: bool) -> str:
    for file in SAFE_WEIGHTS:
        if (folder / file).is_file():
            return file
    for file in PICKLED_WEIGHTS:
        if (folder / file).is_file():
            if not trust_pickle:
                raise ModelLoadError(
                    f"{name!r} stores its weights pickled ({file}), and unpickling can run arbitrary code; "
                    "if you trust the file, pass --trust-pickle (Python: trust_pickle=True), or re-save it "
                    "with safetensors")
            return file
    raise ModelLoadError(f"{name!r} has no PyTorch weights (model.safetensors or pytorch_model.bin)")


def load_hf(spec: str, *, task: str | None = None, trust_pickle: bool = False,
            example_inputs: str | Path | Mapping[str, np.ndarray] | None = None,
            inputs: tuple = ()) -> "ModelSource":
    """Load a Hugging Face model as a ModelSource whose inputs, dims and outputs come from Optimum.

    The module returns a dict of Optimum's output names (e.g. last_hidden_state, logits);
    example inputs are Optimum's dummy inputs (batch 2, seq 16, right padding) unless
    `example_inputs` (an .npz keyed by input name, e.g. from `edgeai data text`) is given.
    """
    from edgeai.source import ModelSource, _check_forward  # one message for a forward that fails on its inputs

    if inputs:
        raise InputSpecError("hf: models take their inputs from Optimum's export config; drop --input "
                             "(set example sizes with --example-inputs FILE.npz)")
    ref = resolve(spec, trust_pickle)
    optimum = _optimum()
    config = _auto_config(ref)
    task = check_task(config, task or infer_task(config, optimum), optimum)
    model = _load_model(ref, config, task, optimum)
    onnx_config = optimum.constructor(model, task)(model.config, task=task)
    for key, value in (onnx_config.values_override or {}).items():
        setattr(model.config, key, value)
    axes = dict(onnx_config.ordered_inputs(model))
    outputs = list(onnx_config.outputs)
    dummy = onnx_config.generate_dummy_inputs(framework="pt")
    feeds = {n: dummy[n].numpy() for n in axes}
    specs = [_spec(n, feeds[n], axes[n]) for n in axes]
    if example_inputs is not None:
        feeds, specs = _user_examples(example_inputs, specs)
    module = _wrap(model, onnx_config, list(axes), outputs)
    provenance = {"loader": "hf", "model_id": ref.model_id, "revision": ref.revision, "task": task,
                  "model_type": config.model_type, "architecture": type(model).__name__, "weights": ref.weights,
                  "outputs": outputs, **optimum.versions, **_max_dims(model, specs)}
    source = ModelSource("hf", spec, module, feeds, specs, provenance=provenance)
    _check_forward(source)
    return source


def _spec(name: str, arr: np.ndarray, axes: Mapping[int, str]) -> TensorSpec:
    shape = tuple(DIM_NAMES[axes[i]] if axes.get(i) in DIM_NAMES else int(s) for i, s in enumerate(arr.shape))
    sizes = {d: int(s) for d, s in zip(shape, arr.shape) if isinstance(d, str)}
    return TensorSpec(name, shape, str(arr.dtype), sizes)


def _max_dims(model, specs: list[TensorSpec]) -> dict:
    """{"max_dims": {"seq": N}} when the model has a position table: N positions (less the
    padding offset RoBERTa-style tables start after); verification stays within it."""
    import torch
    if not any("seq" in s.dynamic_dims for s in specs):
        return {}
    limits = []
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        if isinstance(table, torch.nn.Embedding):
            offset = table.padding_idx + 1 if table.padding_idx is not None else 0
            limits.append(table.num_embeddings - offset)
    return {"max_dims": {"seq": min(limits)}} if limits else {}


def _user_examples(data, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], list[TensorSpec]]:
    from dataclasses import replace

    from edgeai.data import load_feeds, split_labels
    # names, ranks, fixed dims and dtypes are checked against the specs (the batch dim is always dynamic)
    feeds, _ = split_labels(load_feeds(data, specs, what="example inputs"))
    return feeds, [replace(s, example_sizes={d: int(n) for d, n in zip(s.shape, feeds[s.name].shape)
                                             if isinstance(d, str)}) for s in specs]


# ---------------------------------------------------------------------------- Optimum and transformers

@dataclass(frozen=True)
class _Optimum:
    tasks: Any                    # optimum.exporters.tasks.TasksManager
    versions: dict[str, str]

    def constructor(self, model, task: str):
        return self.tasks.get_exporter_config_constructor(exporter="onnx", model=model, task=task,
                                                          library_name="transformers")


def _optimum() -> _Optimum:
    from importlib.metadata import version
    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX export configs)
        from optimum.exporters.tasks import TasksManager
    except ImportError:
        raise MissingDependencyError(f"hf: models need Optimum and transformers; run: {install_command('hf')}") from None
    versions = {p: version(p) for p in ("transformers", "optimum", "optimum-onnx")}
    return _Optimum(TasksManager, versions)


def _auto_config(ref: HFModelRef):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(ref.folder, trust_remote_code=False, local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        raise ModelLoadError(f"{ref.model_id!r}: transformers cannot read its config.json "
                             f"({_one_line(e)})") from None


def infer_task(config, optimum: _Optimum) -> str:
    """The task the saved architecture was made for (BertModel -> feature-extraction, ...)."""
    import transformers
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if cls is None:
            continue
        try:
            return optimum.tasks._infer_task_from_model_or_model_class(model_class=cls)
        except (KeyError, ValueError):
            continue
    raise ModelLoadError(f"cannot tell the task of this {config.model_type} model (config.json names no known "
                         f"architecture); pass --task, one of: {', '.join(supported_tasks(config, optimum))}")


def supported_tasks(config, optimum: _Optimum) -> list[str]:
    try:
        tasks = optimum.tasks.get_supported_tasks_for_model_type(config.model_type, exporter="onnx",
                                                                 library_name="transformers")
    except KeyError:
        raise ModelLoadError(f"Optimum has no ONNX export config for model type {config.model_type!r}; "
                             "export it as a factory with --input specs instead") from None
    return sorted(t for t in tasks if not t.endswith("-with-past"))


def check_task(config, task: str, optimum: _Optimum) -> str:
    known = supported_tasks(config, optimum)
    if task not in known:
        raise ModelLoadError(f"task {task!r} is not supported for {config.model_type} models; known: "
                             f"{', '.join(known)}")
    return task


def _load_model(ref: HFModelRef, config, task: str, optimum: _Optimum):
    cls = optimum.tasks.get_model_class_for_task(task, framework="pt", model_type=config.model_type,
                                                 library="transformers")
    try:
        model, info = cls.from_pretrained(ref.folder, config=config, output_loading_info=True,
                                          trust_remote_code=False, local_files_only=True,
                                          use_safetensors=ref.weights in SAFE_WEIGHTS,
                                          # plain MatMul/Softmax attention: exports on both ONNX paths
                                          # and is what onnxruntime's fusions (onnx:fuse) look for
                                          attn_implementation="eager")
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{ref.model_id!r} does not load as {cls.__name__}: {_one_line(e)}") from None
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ModelLoadError(f"{ref.model_id!r} has no weights for {len(missing)} tensor(s) of {cls.__name__} "
                             f"(e.g. {missing[0]}): task {task!r} needs a head this folder does not hold; pass "
                             "the task it was saved for (--task)")
    return model.eval()


def _wrap(model, onnx_config, input_names: list[str], output_names: list[str]):
    """An nn.Module taking the inputs positionally (named as Optimum names them) and returning a
    dict of Optimum's outputs, with Optimum's export patches applied around each call."""
    import inspect

    import torch

    def forward(self, *args, **kwargs):
        kwargs = {**dict(zip(input_names, args)), **kwargs}
        with onnx_config.patch_model_for_export(self.model):
            out = self.model(**kwargs)
        return {name: out[name] for name in output_names}

    # exporters bind dynamic shapes to forward()'s parameter names
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in input_names]
    forward.__signature__ = inspect.Signature(params)
    cls = type(f"HF{type(model).__name__}", (torch.nn.Module,), {"forward": forward, "__module__": __name__})
    wrapper = cls()
    wrapper.model = model
    return wrapper.eval()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
