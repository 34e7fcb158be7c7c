"""Test helpers: paths, Beam options for fast tests, images made on the fly."""

import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BREAKHIS_CROPS = os.path.join(REPO, "..", "shared", "data", "breakhis-crops")

# In-process Beam for tests that only check behaviour; the CLI tests use the real default.
FAST_BEAM_ARGS = [
    "--runner=preprocessing.beam_runner.FnApiDirectRunner",
    "--direct_running_mode=in_memory",
    "--direct_num_workers=1",
]


def png_bytes(mode: str = "RGB", size=(64, 64), fmt: str = "PNG", seed: int = 0) -> bytes:
    """An image of the given PIL mode, with random content so it is not trivially compressible."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(
            mode
        )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def run_python(script: str) -> subprocess.CompletedProcess:
    """``python -c script`` in a fresh interpreter at the repository root; fails on error."""
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )


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
        states[node] = [
            metadata_store_pb2.Execution.State.Name(e.last_known_state) for e in executions
        ]
    return states


# --- Running the real pipeline small and fast (used by the end-to-end tests) ---

E2E_IMAGE_SIZE = 96
ALL_NODES = {
    "ImportExampleGen",
    "PatientLeakageGate",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "AnomaliesGate",
    "baseline_statistics_resolver",
    "DriftGate",
    "Transform",
    "Trainer",
    "GradCam",
    "latest_blessed_model_resolver",
    "Evaluator",
    "EvalReport",
    "TFLiteExport",
    "Pusher",
    "TFLitePusher",
    "kfp_ui_viewers",
    "span_window_resolver",
}
# Resolver nodes run on every run: never CACHED.
RESOLVERS = {
    "latest_blessed_model_resolver",
    "baseline_statistics_resolver",
    "kfp_ui_viewers",
    "span_window_resolver",
}


# A few epochs need the bigger step the head had before its default became 3e-4 for 200.
E2E_EPOCHS = {"epochs_head": 3, "epochs_fine_tune": 1, "learning_rate": 3e-3}
E2E_STEPS = {"train_steps": 40, "eval_steps": 5}
E2E_MIN_AUC = 0.6


def trainer_config(**overrides) -> dict:
    """The Trainer's custom_config at the declared defaults (not this shell's HISTO_*)."""
    from pipeline import settings

    return {**settings.training_config({}), **overrides}


def small_settings(**overrides) -> dict:
    """create_pipeline settings for a run of a few minutes on 2 cores."""
    from pipeline import configs

    settings = dict(
        trainer_config={**configs.trainer_config(), **E2E_EPOCHS, "image_size": E2E_IMAGE_SIZE},
        **E2E_STEPS,
        min_auc=E2E_MIN_AUC,
        beam_pipeline_args=FAST_BEAM_ARGS,
    )
    settings.update(overrides)
    return settings


def run_local_runner(
    data_root: str, output_dir: str, home: str, image_root: str = "", **env_overrides: str
) -> "subprocess.CompletedProcess":
    """``python local_runner.py`` as a person runs it, with the small settings as HISTO_*
    variables, and Beam on every core as for big data (small data would run in-process)."""
    env = cli_env(
        home,
        **env_overrides,
        HISTO_BEAM_MODE="multi_processing",
        HISTO_IMAGE_SIZE=str(E2E_IMAGE_SIZE),
        HISTO_EPOCHS_HEAD=str(E2E_EPOCHS["epochs_head"]),
        HISTO_EPOCHS_FINE_TUNE=str(E2E_EPOCHS["epochs_fine_tune"]),
        HISTO_LEARNING_RATE=str(E2E_EPOCHS["learning_rate"]),
        HISTO_TRAIN_STEPS=str(E2E_STEPS["train_steps"]),
        HISTO_EVAL_STEPS=str(E2E_STEPS["eval_steps"]),
        HISTO_MIN_AUC=str(E2E_MIN_AUC),
    )
    command = [sys.executable, os.path.join(REPO, "local_runner.py")]
    images = ["--image-root", image_root] if image_root else []
    return subprocess.run(
        [*command, *images, "--data-root", data_root, "--output-dir", output_dir],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def printed_summary(stdout: str) -> dict:
    """The run summary's JSON line from local_runner's console."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("{")))


def run_pipeline(data_root: str, output_dir: str, **overrides) -> dict:
    """Runs the pipeline with LocalDagRunner; returns pipeline.run_summary's summary."""
    from tfx import v1 as tfx

    import local_runner
    from pipeline import run_summary

    tfx.orchestration.LocalDagRunner().run(
        local_runner.build(data_root, output_dir, **small_settings(**overrides))
    )
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        local_runner.metadata_path(output_dir)
    )
    return run_summary.summarize(connection)


def pushed_versions(output: str) -> list:
    import local_runner

    root = os.path.join(output, "serving_model", local_runner.configs.PIPELINE_NAME)
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


# --- Running the project's command-line tools as a user would ---

BIN = os.path.dirname(sys.executable)


def cli_env(home: str, **extra: str) -> dict:
    """The caller's environment minus deployment settings, a fresh HOME, the venv first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HISTO_", "KF_PIPELINES_", "KUBEFLOW_", "VERTEX_"))
        and k != "TFX_IMAGE"
    }
    env.update(HOME=home, PATH=BIN + os.pathsep + env.get("PATH", ""), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


# --- Spans that a gate must stop (another lab's images: demo.generate.shift_stain_and_focus) ---


def rewrite_span(src_span: str, dst_span: str, edit) -> None:
    """Every split of a span written again after ``edit(example)``: another tool's output."""
    import tensorflow as tf

    for split in sorted(os.listdir(src_span)):
        files = tf.io.gfile.glob(os.path.join(src_span, split, "*.tfrecord.gz"))
        if not files:
            continue
        os.makedirs(os.path.join(dst_span, split))
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        path = os.path.join(dst_span, split, "other-tool.tfrecord.gz")
        with tf.io.TFRecordWriter(path, options) as writer:
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
                example = tf.train.Example.FromString(record.numpy())
                edit(example)
                writer.write(example.SerializeToString())
