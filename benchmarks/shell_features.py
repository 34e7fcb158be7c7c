"""Per-image features from SHELL, an H&E-trained network, for the quality benchmark's external arms.

SHELL (``lavlab-shell`` on PyPI, MIT) segments epithelium and stroma in whole-slide H&E with a
SegResNetVAE whose ONNX weights ship inside the package: the one histology-trained backbone
found that installs offline (every other pathology package downloads its weights at run
time). It runs on ONNX Runtime, and ``onnx`` needs a newer protobuf than TensorFlow 2.15, so
this script runs in its own environment and hands the benchmark an .npz:

    python3 -m venv /tmp/shell-venv
    /tmp/shell-venv/bin/pip install onnx onnxruntime macenko-pca numpy pillow scipy scikit-image
    /tmp/shell-venv/bin/pip install --no-deps lavlab-shell==0.9.1
    /tmp/shell-venv/bin/python benchmarks/shell_features.py            # -> outputs/benchmarks/
    .venv/bin/python benchmarks/breakhis_quality.py --arms probe-tiles-refit probe-external \\
        probe-tiles-external --external-features outputs/benchmarks/shell_features.npz

Each image is turned into SHELL's own input, the package's EHO representation (Macenko
eosin, haematoxylin and optical density, each scaled to [0, 1]), at native resolution and at
a quarter of it (the model was trained at about 2 um per pixel). Per scale the features are
the mean and standard deviation of the encoder's output (before the decoder's first
upsampling), the mean of an intermediate encoder stage, and the mean class probabilities of
the segmentation (background, epithelium, stroma).
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import feature_files  # noqa: E402  (NumPy and Pillow only)

WEIGHTS = "model_v1.onnx"  # lavlab-shell 0.9.1's bundled model (shell.model imports PyTorch)
ENCODER_OUTPUT_OF = "node_Conv_932"  # the decoder's first convolution reads the encoder
MIDDLE_STAGE_OF = "node_Conv_922"  # a convolution inside the encoder, one stage earlier
SCALES = (1, 4)  # native, and about SHELL's training resolution
STRIDE = 8  # the network's input sides must be multiples of it


def stain_functions():
    """SHELL's own EHO code. Its module imports MONAI (and through it PyTorch) for
    transforms this script does not use; stand-ins for those names keep them out."""
    stand_ins = {"monai": types.ModuleType("monai")}
    stand_ins["monai.data"] = types.ModuleType("monai.data")
    stand_ins["monai.transforms"] = types.ModuleType("monai.transforms")
    stand_ins["monai.data"].MetaTensor = object
    stand_ins["monai.transforms"].MapTransform = object
    stand_ins["monai.transforms"].Resize = object
    for name, module in stand_ins.items():
        sys.modules.setdefault(name, module)
    from shell import transforms

    return transforms.estimate_stain_params, transforms.apply_eho_chunked


def session(threads: int):
    """An ONNX Runtime session over SHELL's bundled model, with two inner tensors exposed."""
    import importlib.resources

    import onnx
    import onnxruntime

    weights = importlib.resources.files("shell") / "weights" / WEIGHTS
    with importlib.resources.as_file(weights) as path:
        model = onnx.load(str(path))  # its external data file lies beside it
    nodes = {node.name: node for node in model.graph.node}
    inner = [nodes[ENCODER_OUTPUT_OF].input[0], nodes[MIDDLE_STAGE_OF].input[0]]
    for name in inner:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    runner = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return runner, ["logits", *inner]


def image_features(rgb: np.ndarray, scale: int, runner, outputs, stains) -> np.ndarray:
    estimate, apply = stains
    if scale != 1:
        height, width = rgb.shape[:2]
        small = Image.fromarray(rgb).resize((width // scale, height // scale), Image.LANCZOS)
        rgb = np.asarray(small)
    rgb = np.ascontiguousarray(rgb)
    eho = apply(rgb, **estimate(rgb)).astype(np.float32).transpose(2, 0, 1)
    low = eho.min(axis=(1, 2), keepdims=True)
    high = eho.max(axis=(1, 2), keepdims=True)
    eho = (eho - low) / np.maximum(high - low, 1e-8)  # per channel, as SHELL's training did
    pad_h, pad_w = (-eho.shape[1]) % STRIDE, (-eho.shape[2]) % STRIDE
    eho = np.pad(eho, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")[np.newaxis]
    logits, encoder, middle = runner.run(outputs, {"input": eho})
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return np.concatenate(
        [
            encoder.mean(axis=(0, 2, 3)),
            encoder.std(axis=(0, 2, 3)),
            middle.mean(axis=(0, 2, 3)),
            probabilities.mean(axis=(0, 2, 3)),
        ]
    )


def main() -> None:
    parser = feature_files.parser(__doc__.split("\n\n")[0], "shell_features.npz")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    paths = feature_files.image_paths(args.data)
    runner, outputs = session(args.threads)
    stains = stain_functions()

    def compute(rgb: np.ndarray) -> np.ndarray:
        return np.concatenate([image_features(rgb, s, runner, outputs, stains) for s in SCALES])

    feature_files.write(paths, compute, args.output)


if __name__ == "__main__":
    main()
