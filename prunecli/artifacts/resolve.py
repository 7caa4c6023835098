"""An ONNX file from any MODEL: an .onnx file (a bundle's is checked against its recipe), a bundle directory, or a
spec exported on the fly; and what the data loader needs to know of a model that is only an ONNX file."""

from __future__ import annotations

from pathlib import Path

from prunecli.artifacts.bundle import ONNX, RECIPE, is_bundle, read_recipe, verify_file
from prunecli.artifacts.load import load_model
from prunecli.core.errors import UsageError
from prunecli.runtime.export import run_export


def resolve_onnx(spec: str, tmpdir: Path, load_kwargs: dict, flag: str = "MODEL") -> tuple[Path, tuple | None]:
    """(onnx path, input shape or None) for an .onnx file, a bundle, or any MODEL spec (exported on the fly)."""
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise UsageError(f"{flag} {path}: file not found")
        if is_bundle(path.parent):  # a bundle's file (model.onnx, model.int8.onnx): checked against its recipe
            recipe = read_recipe(path.parent)
            if path.name in recipe.get("files", {}):
                verify_file(path.parent, path.name, recipe)
        return path, None
    if path.is_dir() and (path / ONNX).is_file():
        if not is_bundle(path):
            raise UsageError(f"{flag} {path} holds {ONNX} but no {RECIPE}; pass the .onnx file itself")
        recipe = read_recipe(path)
        return verify_file(path, ONNX, recipe), tuple(recipe["input_shape"])
    loaded = load_model(spec, **load_kwargs)
    out = tmpdir / f"{flag.strip('-').lower()}.onnx"
    run_export(loaded, out)
    return out, loaded.input_shape


def fp32_onnx(spec: str, tmp: Path, load_kwargs: dict) -> tuple[Path, object]:
    """(fp32 .onnx path, what the data loader needs of the model) for a bundle, an .onnx file or a MODEL spec."""
    path = Path(spec)
    if path.suffix.lower() == ".onnx" or path.is_dir():  # the exported model is all it takes: no code is loaded
        fp32, _ = resolve_onnx(spec, tmp, {})
        return fp32, OnnxModel(fp32)
    loaded = load_model(spec, **load_kwargs)
    fp32 = tmp / "model.onnx"
    run_export(loaded, fp32)
    return fp32, loaded


class OnnxModel:
    """What the data loader asks of a model, read from an .onnx file's declared input and output shapes."""

    preset = None

    def __init__(self, path) -> None:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or not all(dims[1:]):
            raise UsageError(f"MODEL {path}: its input is not a fixed (batch, channels, height, width) image tensor; "
                             "quantize the bundle or MODEL spec instead")
        self.input_shape = (1, *dims[1:])
        out = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        self._classes = out[1] if len(out) == 2 and out[1] else None
        self.display_name = str(path)

    def output_classes(self):
        return self._classes
