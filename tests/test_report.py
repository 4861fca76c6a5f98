"""The export summary's model-step lines: one per model step, none for the export or quantization steps."""
from edgeai.manifest import ArtifactEntry, Manifest
from edgeai.report import model_step_lines


def _entry(name: str, steps: list[dict]) -> ArtifactEntry:
    return ArtifactEntry(name=name, file=f"{name}.onnx", format="onnx", precision="fp32", sha256="0" * 64,
                         size_bytes=1, inputs=[], outputs=[], steps=steps)


def test_model_step_lines_list_only_model_steps_with_their_notes():
    prune = {"type": "model.prune", "details": {"macs_before": 4e6, "macs_after": 1e6, "target_ratio": 0.75,
                                                 "achieved_ratio": 0.75, "params_before": 1000, "params_after": 250},
             "notes": ["pinned conv6: mat1 and mat2 shapes cannot be multiplied"]}
    steps = [prune, {"type": "export.onnx", "config": {"opset": 18}},
             {"type": "onnx:int8-static", "config": {}, "details": {"quantized_nodes": 3}}]
    manifest = Manifest(source={}, artifacts=[_entry("original", [{"type": "export.onnx"}]), _entry("fp32", steps)],
                        versions={}, created="")
    assert model_step_lines(manifest) == [
        "prune: MACs 4.00M -> 1.00M (asked 0.75, removed 0.750), params 1,000 -> 250 (example batch)",
        "note prune: pinned conv6: mat1 and mat2 shapes cannot be multiplied"]
