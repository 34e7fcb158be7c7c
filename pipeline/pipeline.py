"""The TFX pipeline: new images (or spans preprocessed by hand) -> a pushed, blessed model.

One ``create_pipeline`` serves the local runner and the Kubeflow runners; they differ only
in paths, Beam options and the metadata connection.
"""

import hashlib
import os
from typing import Any

import tensorflow_model_analysis as tfma
from google.protobuf import wrappers_pb2
from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.anomalies_gate import AnomaliesGate
from components.baseline_statistics import BaselineStatisticsStrategy
from components.committed_example_gen import CommittedImportExampleGen
from components.curated_schema_gen import CuratedSchemaGen
from components.drift_gate import DriftGate
from components.eval_report.component import EvalReport
from components.grad_cam.component import GradCam
from components.ingest_images import IngestImages
from components.kfp_viewers import KfpViewersStrategy
from components.patient_leakage_gate import PatientLeakageGate
from components.pusher import dedup_executor
from components.span_window import CURRENT_KEY, WINDOW_KEY, SpanWindowStrategy
from components.tflite_export.component import TFLiteExport, TFLitePusher
from modules import features
from modules.trainer import recipe
from preprocessing import patients


def _split_input_config() -> example_gen_pb2.Input:
    """Reads the latest span's split folders as written by ``preprocessing`` (no re-hashing)."""
    return example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name=split, pattern=f"span-{{SPAN}}/{split}/*")
            for split in features.SPLITS
        ]
    )


MODULES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modules")


def code_version(root: str = MODULES_DIR) -> str:
    """SHA-256 over every .py under ``modules/`` (paths and contents): the code Transform,
    the Tuner and the Trainer run. TFX's user-code wheel hashes only the module file's own
    folder, so an edit to a shared module (features.py, image_tiles.py, recipe.py) would
    leave them cached; this goes into their custom_config, which is part of the cache key."""
    digest = hashlib.sha256()
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _module_kwargs(module: str, function_arg: str, function_name: str) -> dict[str, str]:
    """A ``.py`` path is a ``module_file`` (local); a dotted path names a function in the image."""
    if module.endswith(".py"):
        return {"module_file": module}
    return {function_arg: f"{module}.{function_name}"}


def _report_metrics() -> list[tfma.MetricConfig]:
    """What the evaluation report reads back from TFMA (components/eval_report).

    Confusion matrices on the grid that every model's own operating threshold is chosen
    from (recipe.THRESHOLD_GRID), so the report reads the model's operating point exactly.
    """
    grid = ", ".join(f"{t:.2f}" for t in recipe.THRESHOLD_GRID)
    return [
        tfma.MetricConfig(
            class_name="ConfusionMatrixAtThresholds", config=f'"thresholds": [{grid}]'
        ),
        tfma.MetricConfig(class_name="MeanLabel"),
        tfma.MetricConfig(class_name="MeanPrediction"),
        tfma.MetricConfig(class_name="ConfusionMatrixPlot"),  # ROC and PR curves
        tfma.MetricConfig(class_name="CalibrationPlot", config='"num_buckets": 10'),
    ]


def create_eval_config(min_auc: float, max_auc_drop: float) -> tfma.EvalConfig:
    """Blessing = AUC above a floor and not worse than the last blessed model's AUC."""
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                model_type=tfma.TF_GENERIC,
                label_key=features.LABEL_KEY,
                prediction_key=features.PROBABILITY_OUTPUT,
                preprocessing_function_names=["transform_features"],
            )
        ],
        # Per-patient slices feed the evaluation report's patient-level aggregation; they
        # hold one class each, so the blessing thresholds below skip them.
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=[features.MAGNIFICATION_KEY]),
            tfma.SlicingSpec(feature_keys=[features.SUBTYPE_KEY]),
            tfma.SlicingSpec(feature_keys=[features.PATIENT_ID_KEY]),
        ],
        # Only the metrics declared below: the model's compiled Keras metrics would be
        # computed too, each combiner reloading the SavedModel (most of the Evaluator's time),
        # and a Keras "auc" could be mistaken for the gated one.
        options=tfma.Options(include_default_metrics=wrappers_pb2.BoolValue(value=False)),
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    tfma.MetricConfig(class_name="BinaryAccuracy"),
                    tfma.MetricConfig(class_name="Precision"),
                    tfma.MetricConfig(class_name="Recall"),
                    tfma.MetricConfig(class_name="AUC", config='"name": "auc_pr", "curve": "PR"'),
                    tfma.MetricConfig(
                        class_name="AUC",
                        per_slice_thresholds=[
                            # Blessing looks at the whole split: slices such as a subtype
                            # hold one class, where AUC is undefined (TFMA reports 0).
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()],
                                threshold=tfma.MetricThreshold(
                                    value_threshold=tfma.GenericValueThreshold(
                                        lower_bound={"value": min_auc}
                                    ),
                                    change_threshold=tfma.GenericChangeThreshold(
                                        direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                        absolute={"value": -max_auc_drop - 1e-10},
                                    ),
                                ),
                            )
                        ],
                    ),
                    *_report_metrics(),
                ]
            )
        ],
    )


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    transform_module: str,
    trainer_module: str,
    serving_model_dir: str,
    trainer_config: dict[str, Any],
    train_steps: int,
    eval_steps: int,
    min_auc: float,
    max_auc_drop: float,
    schema_file: str,
    drift_thresholds: str,
    grad_cam_per_class: int,
    tflite_max_images: int,
    tflite_max_auc_loss: float,
    tuner_trials: int,
    schema_sha256: str | None = None,
    patient_rule: str = patients.DEFAULT_RULE,
    accept_drift: str = "",
    drift_gate: bool = True,
    kfp_ui_viewers: bool = True,
    blessing_split: str = features.TEST_SPLIT,
    beam_pipeline_args: list[str] | None = None,
    metadata_connection_config: Any | None = None,
    enable_cache: bool = True,
    enable_tuner: bool = False,
    tuner_module: str | None = None,
    image_root: str = "",
    ingest_settings: dict[str, Any] | None = None,
    span_window: int | None = 0,
) -> tfx.dsl.Pipeline:
    """Lists the components in order; see the README for what each one guards.

    With ``image_root``, the run starts by converting the images that arrived there into
    the next span (IngestImages); without it, spans come from ``histo-preprocess``.
    ``span_window`` None trains on the latest span alone, without the window resolver.
    """
    components = []
    code = code_version()

    ingest = None
    if image_root:
        ingest = IngestImages(
            image_root=image_root,
            data_root=data_root,
            patient_rule=patient_rule,  # the leakage gate's: one rule for both
            **(ingest_settings or {}),
        )
        components.append(ingest)

    # The latest committed span (an object-store span being copied is not read yet).
    example_gen = CommittedImportExampleGen(
        input_base=data_root, input_config=_split_input_config()
    ).with_id("ImportExampleGen")
    if ingest:
        example_gen.add_upstream_node(ingest)  # reads the span ingestion may have written
    components.append(example_gen)

    leakage_gate = PatientLeakageGate(
        examples=example_gen.outputs["examples"], patient_rule=patient_rule
    )
    components.append(leakage_gate)

    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    components.append(statistics_gen)

    # A fixed, curated schema: a schema re-inferred from each span could never object to it.
    schema_gen = CuratedSchemaGen(schema_file=schema_file, schema_sha256=schema_sha256).with_id(
        "ImportSchemaGen"
    )
    components.append(schema_gen)

    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    components.append(example_validator)

    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    components.append(anomalies_gate)
    gates = [leakage_gate, anomalies_gate]

    if drift_gate:
        # The statistics of the data the serving (last blessed) model was trained on.
        baseline_resolver = tfx.dsl.Resolver(
            strategy_class=BaselineStatisticsStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
            statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
        ).with_id("baseline_statistics_resolver")
        components.append(baseline_resolver)
        drift = DriftGate(
            statistics=statistics_gen.outputs["statistics"],
            schema=schema_gen.outputs["schema"],
            baseline_statistics=baseline_resolver.outputs["statistics"],
            thresholds=drift_thresholds,
            accepted=accept_drift,
            split=features.TRAIN_SPLIT,
        )
        # Drift is measured on data that matches the schema: the schema gate speaks first.
        drift.add_upstream_node(anomalies_gate)
        components.append(drift)
        gates.append(drift)

    # The gates judge the new span alone; training and evaluation see it together with the
    # earlier spans that passed the gates (the newest span_window of them; 0: all).
    window = example_gen.outputs["examples"]
    if span_window is not None:
        span_window_resolver = tfx.dsl.Resolver(
            strategy_class=SpanWindowStrategy,
            config={"window": span_window},
            **{
                CURRENT_KEY: example_gen.outputs["examples"],
                WINDOW_KEY: tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
            },
        ).with_id("span_window_resolver")
        components.append(span_window_resolver)
        window = span_window_resolver.outputs[WINDOW_KEY]

    transform = tfx.components.Transform(
        examples=window,
        schema=schema_gen.outputs["schema"],
        **_module_kwargs(transform_module, "preprocessing_fn", "preprocessing_fn"),
        custom_config={"code_version": code},
        # StatisticsGen already describes the raw data and Transform passes it through:
        # TFT's pre/post-transform statistics would describe the same bytes twice more.
        disable_statistics=True,
    )
    # Data gates must pass before any expensive work starts.
    for gate in gates:
        transform.add_upstream_node(gate)
    components.append(transform)

    # What the Tuner's trials and the Trainer both train on, for the same number of steps.
    training_inputs = dict(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
    )
    tuner = None
    if enable_tuner:
        if not tuner_module:
            raise ValueError("enable_tuner needs tuner_module (a .py file or a dotted module)")
        # Same data, steps and settings as the Trainer; each trial costs about one training.
        tuner = tfx.components.Tuner(
            **training_inputs,
            custom_config={
                **trainer_config,
                "max_trials": tuner_trials,
                "code_version": code,
            },
            **_module_kwargs(tuner_module, "tuner_fn", "tuner_fn"),
        )
        components.append(tuner)

    trainer = tfx.components.Trainer(
        **training_inputs,
        custom_config={**trainer_config, "code_version": code},
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        **_module_kwargs(trainer_module, "run_fn", "run_fn"),
    )
    components.append(trainer)

    # Heatmaps of a fixed audit set of held-out patients, for every candidate (blessed or
    # not): the test split, as the eval split may teach the head (HISTO_HEAD_REFIT).
    grad_cam = GradCam(
        model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        split=features.TEST_SPLIT,
        per_class=grad_cam_per_class,
    )
    components.append(grad_cam)

    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    components.append(model_resolver)

    evaluator = tfx.components.Evaluator(
        examples=window,  # every approved span's held-out patients
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        example_splits=[blessing_split],
        eval_config=create_eval_config(min_auc, max_auc_drop),
    )
    components.append(evaluator)

    eval_report = EvalReport(
        evaluation=evaluator.outputs["evaluation"],
        blessing=evaluator.outputs["blessing"],
        model=trainer.outputs["model"],
        statistics=statistics_gen.outputs["statistics"],
        examples=example_gen.outputs["examples"],
        gallery=grad_cam.outputs["gallery"],  # a row of its thumbnails in the report
        blessing_split=blessing_split,
    )
    components.append(eval_report)

    # Converted for every candidate; parity on the held-out splits gates shipping it.
    tflite_export = TFLiteExport(
        model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        max_images=tflite_max_images,
        max_auc_loss=tflite_max_auc_loss,
    )
    components.append(tflite_export)

    pusher = tfx.components.Pusher(
        custom_executor_spec=executor_spec.ExecutorClassSpec(dedup_executor.Executor),
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
    )
    components.append(pusher)

    # Copies model.tflite into the pushed version's assets.extra/ if pushed and at parity.
    tflite_pusher = TFLitePusher(
        tflite=tflite_export.outputs["tflite"], pushed_model=pusher.outputs["pushed_model"]
    )
    components.append(tflite_pusher)

    if kfp_ui_viewers:
        # Never cached (a resolver): shows this run's report, gallery and gate reports in
        # the Kubeflow UI even when the steps that made them were served from the cache.
        shown = {
            "report": eval_report.outputs["report"],
            "gallery": grad_cam.outputs["gallery"],
            "patients": leakage_gate.outputs["report"],
        }
        if drift_gate:
            shown["drift"] = drift.outputs["report"]
        components.append(
            tfx.dsl.Resolver(strategy_class=KfpViewersStrategy, **shown).with_id("kfp_ui_viewers")
        )

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
