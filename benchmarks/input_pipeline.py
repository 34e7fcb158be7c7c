"""Does the Trainer's input keep the model busy? The recipe's two phases, fed from the real
Transform output vs from memory, same model, same run.

Demo images (256 px, so 1 tile at 224 px and 3 x 3 at 96 px) are run through the real
``preprocessing_fn`` with ``tft_beam`` (gzipped transformed tf.Examples plus the transform
graph, as the Transform component writes them). Then, with one MobileNetV2 classifier
(``recipe.build``, offline ImageNet weights):

- **features** (the recipe's main cost): images/s of ``recipe.image_features`` reading the
  records (parse, decode, tile, views, backbone) vs the same backbone on the same views
  already decoded in memory;
- **fine-tune** (optional phase): steps/s of ``model.fit`` fed by ``recipe.tile_dataset``
  (decode, tile, cache, shuffle, augment, batch) vs one in-memory batch repeated.

Warm-up (tracing, cache filling) is not timed; each feed is timed ``--repeats`` times,
alternating, median reported. The ratio is pipeline / in-memory; 1.0 means the input costs
nothing. On a CPU-only host decoding and the model share the same cores, so the ratio is
pessimistic there.

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
from modules import features, image_tiles
from modules.trainer import data, recipe
from modules.trainer.hyperparameters import hyperparameters
from modules.trainer.model import unfreeze_top
from modules.transform.transform_module import preprocessing_fn
from pipeline import configs
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
    del image_size  # Transform passes the encoded image through; the model tiles it
    fn = functools.partial(preprocessing_fn, custom_config={})
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


def _median_of_alternating(timers: dict, repeats: int) -> dict:
    rates = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            rates[name].append(timer())
    result = {name: round(statistics.median(r), 3) for name, r in rates.items()}
    result["ratio"] = round(result["pipeline"] / result["in-memory"], 3)
    return result


def feature_rates(network, images, size: int, max_tiles: int, repeats: int) -> dict:
    """Images/s of the recipe's feature pass: from the records vs from decoded views."""
    views = [image_tiles.image_views(image, size, max_tiles) for image, _ in images()]

    @tf.function(reduce_retracing=True)
    def mean_feature(v: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(network(v, training=False), axis=0)

    def from_memory() -> float:
        started = time.perf_counter()
        for v in views:
            mean_feature(v).numpy()
        return len(views) / (time.perf_counter() - started)

    def from_records() -> float:
        started = time.perf_counter()
        recipe.image_features(network, images(), size, max_tiles)
        return len(views) / (time.perf_counter() - started)

    from_memory(), from_records()  # warm-up: tracing
    return _median_of_alternating({"pipeline": from_records, "in-memory": from_memory}, repeats)


def benchmark_size(images: str, work: str, size: int, args: argparse.Namespace) -> dict:
    """Transform, then the feature pass and fine-tuning steps, each fed both ways."""
    started = time.perf_counter()
    tf_transform_output, patterns, count = run_transform(
        images, os.path.join(work, str(size)), size
    )
    transform_seconds = time.perf_counter() - started

    hp = hyperparameters(
        {
            **configs.trainer_config(),
            "image_size": size,
            "weights": args.weights,
            "batch_size": args.batch_size,
        }
    )
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    model, backbone = recipe.build(hp)
    result = {"image_size": size, "images": count, "batch_size": args.batch_size}
    result["weights"] = backbone.weights_source
    result["transform_s"] = round(transform_seconds, 1)

    def pairs() -> tf.data.Dataset:
        return data.image_dataset(patterns, tf_transform_output)

    network = recipe.features_model(model)
    result["features"] = feature_rates(network, pairs, size, int(hp["max_tiles"]), args.repeats)

    pipeline = recipe.tile_dataset(pairs(), hp, int(hp["seed"]), n_images=count)
    batch = next(iter(pipeline))
    feeds = {"pipeline": pipeline, "in-memory": tf.data.Dataset.from_tensors(batch).repeat()}
    result["input_only_batches_per_s"] = round(
        input_only_batches_per_second(pipeline, args.warmup, 3 * args.steps), 1
    )
    unfreeze_top(backbone.model, float(hp["fine_tune_fraction"]))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    result["fine_tune"] = _median_of_alternating(
        {
            name: functools.partial(steps_per_second, model, dataset, None, args.warmup, args.steps)
            for name, dataset in feeds.items()
        },
        args.repeats,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--images-per-patient", type=int, default=10, help="x 20 patients")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--weights",
        default="auto",
        help="backbone weights, as the Trainer resolves them",
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
    print("size | phase                  | in-memory | pipeline | pipeline / in-memory")
    for row in rows:
        for phase, unit in (("features", "images/s"), ("fine_tune", "steps/s")):
            r = row[phase]
            print(
                f"{row['image_size']:>4} | {phase + ' (' + unit + ')':<22} | "
                f"{r['in-memory']:>9} | {r['pipeline']:>8} | {r['ratio']:>19}x"
            )
    for row in rows:
        print(
            f"{row['image_size']:>4} | input pipeline alone (no model): "
            f"{row['input_only_batches_per_s']} batches/s"
        )
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
