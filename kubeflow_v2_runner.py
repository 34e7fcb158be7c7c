"""Compiles the pipeline for KFP v2 / Vertex AI Pipelines (a PipelineJob JSON).

    tfx pipeline create --engine vertex --pipeline_path kubeflow_v2_runner.py
    tfx run create --engine vertex --pipeline_name NAME --project P --region R

Same settings as kubeflow_runner.py (environment variables, pipeline/kubeflow_settings.py).
The latest-blessed-model Resolver compiles to MLMD artifact queries that Vertex AI runs;
the open-source KFP v2 backend does not run them (docs/kubeflow.md), use kubeflow_runner.py
there.
"""

from absl import logging
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import kubeflow_settings
from pipeline.pipeline import create_pipeline

TRAINER_ID = "Trainer"
ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def trainer_resources(settings: kubeflow_settings.KubeflowSettings) -> ResourceSpec:
    """Vertex picks the Trainer's machine from these; the other steps get Vertex defaults."""
    spec = ResourceSpec(
        cpu_limit=kubeflow_settings.cpu_cores(settings.trainer_cpu_request),
        memory_limit=kubeflow_settings.memory_bytes(
            settings.trainer_memory_limit or settings.trainer_memory_request
        )
        / 1e9,
    )
    if settings.trainer_gpus:
        spec.accelerator.type = settings.vertex_accelerator
        spec.accelerator.count = settings.trainer_gpus
    return spec


def output_filename(pipeline_name: str) -> str:
    return f"{pipeline_name}_pipeline.json"


def run() -> None:
    """Builds the settings and compiles create_pipeline into <pipeline_name>_pipeline.json."""
    settings = kubeflow_settings.from_env()
    # KFP v2 compiles only TFX's built-in resolver strategies, not the drift gate's
    # baseline lookup (components/baseline_statistics.py), the span window
    # (components/span_window.py) nor the KFP v1 UI viewers step; nor does it run custom
    # drivers, so IngestImages' cache key would never see new images. Vertex runs without
    # them: spans come from histo-preprocess, and each run trains on the latest one.
    kwargs = {
        **kubeflow_settings.create_pipeline_kwargs(settings),
        "image_root": "",
        "span_window": None,
    }
    tfx_pipeline = create_pipeline(**kwargs, drift_gate=False, kfp_ui_viewers=False)
    for component in tfx_pipeline.components:
        if component.id == TRAINER_ID:
            component.with_platform_config(trainer_resources(settings))
    runner_config = kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
        display_name=settings.pipeline_name, default_image=settings.image
    )
    kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=runner_config,
        output_dir=settings.output_dir,
        output_filename=output_filename(settings.pipeline_name),
    ).run(tfx_pipeline)


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    run()
