"""Runs the pipeline on this machine with LocalDagRunner and SQLite metadata.

    python local_runner.py --image-root outputs/demo/images --data-root outputs/demo/data \
        --output-dir outputs

With an image root, each run first converts the images that arrived there since the last
span into the next span (IngestImages); without one, the data root's spans come from
``histo-preprocess``. Paths come from flags (or HISTO_IMAGE_ROOT / HISTO_DATA_ROOT /
HISTO_OUTPUT_DIR); every other setting from
``pipeline/configs.py``. Ends by printing the evaluation metrics, the blessing and where
the model was pushed; a run stopped by a data gate (leakage, schema, drift) says which gate
and why, and exits with status 2, leaving the serving model as it was.
"""

import sys

if __name__ == "__main__":  # before TensorFlow is imported: its start-up lines go to the log
    from pipeline import console

    console.start(sys.argv[1:])

import argparse
import importlib.util
import logging
import os

from tfx import v1 as tfx

from components.gate_error import DataGateError
from pipeline import configs, console, pipeline, run_summary


def module_file(dotted: str) -> str:
    """configs' dotted module path -> the file TFX packs into its user-code wheel."""
    spec = importlib.util.find_spec(dotted)
    if spec is None or not spec.origin:
        raise ValueError(f"module {dotted!r} not found on the Python path")
    return spec.origin


def local_beam_args(data_root: str, mode: str | None = None) -> list[str]:
    """configs' Beam options for this data: one process for small data, every core above."""
    mode = mode or configs.BEAM_MODE
    if mode == "auto":
        size = sum(
            os.path.getsize(os.path.join(folder, name))
            for folder, _, names in os.walk(data_root)
            for name in names
        )
        mode = "in_memory" if size < configs.SMALL_DATA_BYTES else "multi_processing"
    if mode == "in_memory":
        return list(configs.LOCAL_BEAM_IN_MEMORY_ARGS)
    if mode == "multi_processing":
        return list(configs.LOCAL_BEAM_PIPELINE_ARGS)
    raise ValueError(f"HISTO_BEAM_MODE={mode!r}: expected auto, in_memory or multi_processing")


def install_user_code_without_resolving() -> None:
    """Each component that calls a module file pip-installs TFX's user-code wheel into a
    temporary folder (three times in Transform). Those wheels have no dependencies, but
    pip's resolver still inspects the whole environment: 2.4 s per install, 0.5 s without.
    Set for this process only (a user's own PIP_NO_DEPS wins)."""
    os.environ.setdefault("PIP_NO_DEPS", "1")


def build(data_root: str, output_dir: str, image_root: str = "", **overrides) -> tfx.dsl.Pipeline:
    """The pipeline with configs' settings; tests pass overrides for create_pipeline's args."""
    install_user_code_without_resolving()
    tfx_root = os.path.join(output_dir, "tfx")
    settings = {
        **configs.pipeline_settings(),
        "pipeline_name": configs.PIPELINE_NAME,
        "pipeline_root": os.path.join(tfx_root, "pipelines", configs.PIPELINE_NAME),
        "data_root": os.path.abspath(data_root),
        "image_root": os.path.abspath(image_root) if image_root else "",
        # Files, not dotted paths: TFX packs each module's folder into a user-code wheel.
        "transform_module": module_file(configs.TRANSFORM_MODULE),
        "trainer_module": module_file(configs.TRAINER_MODULE),
        "tuner_module": module_file(configs.TUNER_MODULE),
        "serving_model_dir": os.path.join(output_dir, "serving_model", configs.PIPELINE_NAME),
        "beam_pipeline_args": local_beam_args(data_root),
        "metadata_connection_config": (
            tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(output_dir))
        ),
    }
    settings.update(overrides)
    return pipeline.create_pipeline(**settings)


def metadata_path(output_dir: str) -> str:
    return os.path.join(output_dir, "tfx", "metadata", configs.PIPELINE_NAME, "metadata.db")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    terminal = console.start(argv)
    parser = argparse.ArgumentParser(description=__doc__, parents=[console.arguments()])
    parser.add_argument("--data-root", default=os.environ.get("HISTO_DATA_ROOT"))  # no default here
    parser.add_argument(
        "--image-root",
        default=os.environ.get("HISTO_IMAGE_ROOT", ""),  # none by default here
        help="folder of slide images: what arrived since the last span becomes the next one",
    )
    args = parser.parse_args(argv)
    if not args.data_root:
        parser.error("--data-root (or HISTO_DATA_ROOT) is required: the folder of span-N/")
    if args.image_root and not os.path.isdir(args.image_root):
        parser.error(f"--image-root {args.image_root}: no such folder")
    lines = console.attach_logging(terminal)
    output_dir = os.path.abspath(args.output_dir)
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        metadata_path(output_dir)
    )
    images = f"images {os.path.abspath(args.image_root)} -> " if args.image_root else ""
    terminal.say(f"{configs.PIPELINE_NAME}: {images}data {os.path.abspath(args.data_root)}")
    try:
        tfx.orchestration.LocalDagRunner().run(
            build(args.data_root, output_dir, image_root=args.image_root)
        )
    except DataGateError as stopped:
        console.finish(
            terminal, run_summary.format_stopped(str(stopped), run_summary.summarize(connection))
        )
        return 2
    except Exception as error:  # noqa: BLE001 - said in one line; the traceback is in the log
        logging.exception("the run failed")
        where = f" in {lines.node}" if lines.node else ""
        console.finish(terminal, f"failed{where}: {type(error).__name__}: {error}")
        return 1
    console.finish(terminal, run_summary.format_summary(run_summary.summarize(connection)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
