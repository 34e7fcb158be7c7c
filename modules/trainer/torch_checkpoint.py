"""Read PyTorch ``.pth`` checkpoints into numpy arrays without importing torch.

torch is a multi-gigabyte dependency we do not otherwise need; the only thing we want from
a checkpoint is its tensors. Both on-disk formats written by ``torch.save`` are handled:

* the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one raw file per storage;
* the legacy format: four pickles in a row (magic number, protocol version, system info,
  the object itself), the list of storage keys, then each storage as an int64 element
  count followed by its raw little-endian bytes.

The unpickler only resolves the handful of globals a state dict needs (tensor rebuild
functions, storage types, ``OrderedDict``); anything else is refused, so a hostile file
cannot run code.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    # numpy has no bfloat16: keep the raw 16 bits, widened to float32 on materialisation.
    "BFloat16Storage": np.dtype("<u2"),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only the element type matters."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclasses.dataclass
class _Storage:
    """A storage whose bytes may arrive later (legacy files put them after the pickle)."""

    key: str
    storage_type: _StorageType
    data: bytes | None = None


@dataclasses.dataclass
class _LazyTensor:
    """A tensor view recorded while unpickling, materialised once storages are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        if self.storage.data is None:
            raise ValueError(f"storage {self.storage.key!r} was never read")
        dtype = self.storage.storage_type.dtype
        flat = np.frombuffer(self.storage.data, dtype=dtype)
        strides = tuple(s * dtype.itemsize for s in self.stride)
        array = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.shape, strides=strides
        ).copy()
        if self.storage.storage_type.name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_unused) -> _LazyTensor:
    """Covers ``_rebuild_tensor`` and ``_rebuild_tensor_v2`` (extra args: grad, hooks, ...)."""
    return _LazyTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_unused) -> Any:
    """``nn.Parameter`` wrappers carry nothing we need beyond the tensor."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and delegates storage ids."""

    def __init__(self, file: BinaryIO, persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file)
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a checkpoint"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def _materialise(obj: Any) -> Any:
    """Replace every lazy tensor inside dicts/lists/tuples by its numpy array."""
    if isinstance(obj, _LazyTensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _storage_from_pid(pid: Any, storages: dict[str, _Storage]) -> _Storage:
    """Turn ``('storage', type, key, location, numel[, view])`` into a shared ``_Storage``."""
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    if len(pid) > 5 and pid[5] is not None:
        raise pickle.UnpicklingError("storage views (pre-0.4 checkpoints) are not supported")
    return storages.setdefault(key, _Storage(key, storage_type))


def _load_legacy(file: BinaryIO) -> Any:
    """Read the pre-1.6 stream format (what torchvision's 2018 checkpoints use)."""
    magic = _RestrictedUnpickler(file).load()
    if magic != LEGACY_MAGIC_NUMBER:
        raise ValueError("not a PyTorch checkpoint (bad magic number)")
    version = _RestrictedUnpickler(file).load()
    if version != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy protocol version {version}")
    sys_info = _RestrictedUnpickler(file).load()
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(file, lambda pid: _storage_from_pid(pid, storages)).load()
    for key in _RestrictedUnpickler(file).load():
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", file.read(8))
        nbytes = numel * storage.storage_type.dtype.itemsize
        storage.data = file.read(nbytes)
        if len(storage.data) != nbytes:
            raise ValueError(f"checkpoint truncated inside storage {key!r}")
    return _materialise(result)


def _load_zip(archive: zipfile.ZipFile) -> Any:
    """Read the zip format: ``<root>/data.pkl`` with storages in ``<root>/data/<key>``."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise ValueError(f"expected one data.pkl in the checkpoint, found {pickles}")
    root = pickles[0][: -len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
        raise ValueError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        storage = _storage_from_pid(pid, storages)
        if storage.data is None:
            storage.data = archive.read(f"{root}data/{storage.key}")
        return storage

    with archive.open(pickles[0]) as handle:
        result = _RestrictedUnpickler(io.BytesIO(handle.read()), persistent_load).load()
    return _materialise(result)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file; tensors come back as numpy arrays (contiguous copies)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return _load_zip(archive)
    with open(path, "rb") as file:
        return _load_legacy(file)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a checkpoint that is a state dict (possibly wrapped in ``{"state_dict": ...}``)."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict but a {type(obj).__name__}")
    arrays = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise ValueError(f"{path} holds no tensors")
    return arrays
