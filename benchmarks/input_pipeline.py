"""Does the Trainer's input pipeline keep the model busy? Training steps/s of the same model
fed by ``data.make_dataset`` over real Transform output vs by one in-memory batch.

For each image size: demo tiles are run through the real ``preprocessing_fn`` with
``tft_beam`` (gzipped transformed tf.Examples plus the transform graph, as the Transform
component writes them); then one MobileNetV2 classifier (``trainer_module.build_model``)
is trained with ``model.fit`` in both phases of the recipe (frozen backbone, then the top
30% fine-tuned), each phase fed alternately by

- ``pipeline``: ``data.make_dataset`` (parse, cache, shuffle, augment, batch, prefetch), and
- ``in-memory``: ``tf.data.Dataset.from_tensors(batch).repeat()``, one decoded batch.

Warm-up steps (tracing, the first pass that fills the cache) are not timed; each feed is
timed ``--repeats`` times, alternating, and the median is reported. The ratio is
pipeline / in-memory steps/s; 1.0 means the input costs nothing. On a CPU-only host the
augmentation and the model share the same cores, so the ratio is pessimistic there. On a
GPU node the model leaves the CPU, and the limit becomes the pipeline alone (iterated
without a model, also timed): the most batches/s these cores can feed.

    .venv/bin/python benchmarks/input_pipeline.py --sizes 96 224
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from demo.generate import generate
from modules import features
from modules.trainer import data, trainer_module
from modules.trainer.model import unfreeze_top
from modules.transform.transform_module import preprocessing_fn
from preprocessing import layouts

FAST_BEAM_ARGS = [
    "--runner=preprocessing.beam_runner.FnApiDirectRunner",
    "--direct_running_mode=in_memory",
    "--direct_num_workers=1",
]


def make_demo_images(root: str, images_per_patient: int) -> str:
    """Synthetic H&E-like tiles (20 patients, both classes), as the demo pipeline uses."""
    images = os.path.join(root, "images")
    generate(images, images_per_patient=images_per_patient, size=256)
    return images


def run_transform(images: str, output: str, image_size: int):
    """The real preprocessing_fn through tft_beam: (TFTransformOutput, records glob, count)."""
    records, _ = layouts.discover(images)
    raw = []
    for record in records:
        with open(record.path, "rb") as f:
            raw.append({features.IMAGE_KEY: [f.read()], features.LABEL_KEY: [record.label]})
    # Shapes as SchemaGen(infer_feature_shape=True) gives them in the pipeline: one value each.
    raw_spec = {
        features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
        features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64),
    }
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw_spec))
    graph_dir = os.path.join(output, "transform_graph")
    prefix = os.path.join(output, "transformed", "train", "data")
    fn = functools.partial(preprocessing_fn, custom_config={"image_size": image_size})
    with beam.Pipeline(argv=FAST_BEAM_ARGS) as pipeline:
        with tft_beam.Context(temp_dir=os.path.join(output, "tmp")):
            (transformed, transformed_metadata), transform_fn = (
                pipeline | beam.Create(raw),
                metadata,
            ) | tft_beam.AnalyzeAndTransformDataset(fn)
            coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
            _ = (
                transformed
                | beam.Map(coder.encode)
                | beam.io.WriteToTFRecord(
                    prefix, file_name_suffix=".gz", compression_type="gzip", num_shards=2
                )
            )
            _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
            # Transform also keeps the raw schema beside the graph (serving reads it).
            raw_metadata_dir = os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
            _ = metadata | tft_beam.WriteMetadata(raw_metadata_dir, pipeline)
    return tft.TFTransformOutput(graph_dir), [prefix + "*"], len(raw)


class StepTimer(tf.keras.callbacks.Callback):
    """Wall time at the end of every training batch."""

    def on_train_begin(self, logs=None):
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def steps_per_second(model, dataset, class_weight, warmup: int, steps: int) -> float:
    """One ``fit`` of warmup + steps batches; the rate over the last ``steps`` batches."""
    timer = StepTimer()
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=warmup + steps,
        class_weight=class_weight,
        callbacks=[timer],
        verbose=0,
    )
    return steps / (timer.ends[-1] - timer.ends[warmup - 1])


def input_only_batches_per_second(dataset: tf.data.Dataset, warmup: int, steps: int) -> float:
    """The pipeline alone, no model: the most batches/s it can feed on these cores."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps / (time.perf_counter() - started)


def measure_phase(model, feeds: dict, class_weight, warmup: int, steps: int, repeats: int) -> dict:
    """Median steps/s of each feed, timed alternately so drifting load hits both alike."""
    rates = {name: [] for name in feeds}
    for _ in range(repeats):
        for name, dataset in feeds.items():
            rates[name].append(steps_per_second(model, dataset, class_weight, warmup, steps))
    result = {name: round(statistics.median(r), 3) for name, r in rates.items()}
    result["ratio"] = round(result["pipeline"] / result["in-memory"], 3)
    return result


def benchmark_size(images: str, work: str, size: int, args: argparse.Namespace) -> dict:
    """Transform at this size, then both phases, each fed by both feeds."""
    started = time.perf_counter()
    tf_transform_output, patterns, count = run_transform(
        images, os.path.join(work, str(size)), size
    )
    transform_seconds = time.perf_counter() - started

    hp = trainer_module.hyperparameters(
        {"image_size": size, "weights": args.weights, "batch_size": args.batch_size}
    )
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    counts = data.count_labels(patterns, tf_transform_output)
    class_weight = trainer_module.class_weights(counts)
    pipeline = data.make_dataset(
        patterns, tf_transform_output, args.batch_size, True, count, int(hp["seed"])
    )
    batch = next(iter(pipeline))
    feeds = {"pipeline": pipeline, "in-memory": tf.data.Dataset.from_tensors(batch).repeat()}

    model, backbone = trainer_module.build_model(hp)
    result = {"image_size": size, "images": count, "batch_size": args.batch_size}
    result["weights"] = backbone.weights_source
    result["transform_s"] = round(transform_seconds, 1)
    input_only = input_only_batches_per_second(pipeline, args.warmup, 3 * args.steps)
    result["input_only_batches_per_s"] = round(input_only, 1)
    timing = (class_weight, args.warmup, args.steps, args.repeats)
    result["head"] = measure_phase(model, feeds, *timing)
    unfreeze_top(backbone.model, float(hp["fine_tune_fraction"]))
    trainer_module.compile_model(model, float(hp["fine_tune_learning_rate"]))
    result["fine_tune"] = measure_phase(model, feeds, *timing)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--images-per-patient", type=int, default=10, help="x 20 patients")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--weights",
        default="auto",
        help="as the Trainer: pretrained weights freeze the backbone in the head phase; "
        "'random' trains it whole from the start",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per fit")
    parser.add_argument("--steps", type=int, default=10, help="timed batches per fit")
    parser.add_argument("--repeats", type=int, default=2, help="timed fits per feed and phase")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        images = make_demo_images(work, args.images_per_patient)
        for size in args.sizes:
            rows.append(benchmark_size(images, work, size, args))
            print(json.dumps(rows[-1]), flush=True)
    total = time.perf_counter() - started
    print(
        f"\nMobileNetV2 (weights={args.weights}), batch {args.batch_size}, "
        f"{args.steps} timed steps x {args.repeats} per feed, median; "
        f"TF {tf.__version__}, {os.cpu_count()} CPUs, "
        f"devices: {[d.device_type for d in tf.config.list_physical_devices()]}"
    )
    print("size | phase     | in-memory steps/s | pipeline steps/s | pipeline / in-memory")
    for row in rows:
        for phase in ("head", "fine_tune"):
            r = row[phase]
            print(
                f"{row['image_size']:>4} | {phase:<9} | {r['in-memory']:>17} | "
                f"{r['pipeline']:>16} | {r['ratio']:>19}x"
            )
    for row in rows:
        print(
            f"{row['image_size']:>4} | input pipeline alone (no model): "
            f"{row['input_only_batches_per_s']} batches/s"
        )
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
