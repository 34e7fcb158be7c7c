"""Test helpers: paths, Beam options for fast tests, images made on the fly."""

import io
import os

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BREAKHIS_CROPS = os.path.join(REPO, "..", "shared", "data", "breakhis-crops")

# In-process Beam for tests that only check behaviour; the CLI tests use the real default.
FAST_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def png_bytes(mode: str = "RGB", size=(64, 64), fmt: str = "PNG", seed: int = 0) -> bytes:
    """An image of the given PIL mode, with random content so it is not trivially compressible."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def node_states(metadata_db: str) -> dict:
    """{node id: [execution states, oldest first]} from the pipeline's ML Metadata."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_db
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(config)
    states = {}
    for context in store.get_contexts_by_type("node"):
        node = context.name.split(".", 1)[1]
        executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
        states[node] = [metadata_store_pb2.Execution.State.Name(e.last_known_state)
                        for e in executions]
    return states
