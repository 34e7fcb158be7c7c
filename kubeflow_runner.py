"""Compiles the pipeline for Kubeflow Pipelines v1 (Argo): the file ``tfx pipeline`` runs.

    tfx pipeline create --engine kubeflow --pipeline_path kubeflow_runner.py --endpoint URL
    tfx pipeline compile --engine kubeflow --pipeline_path kubeflow_runner.py

Settings come from environment variables (pipeline/kubeflow_settings.py, docs/kubeflow.md).
Every step runs the project image; only the Trainer step asks for a GPU, lands on the GPU
node pool and tolerates its taint, so the CPU steps never hold an accelerator node.
"""

from absl import logging
from kubernetes import client as k8s_client
from tfx.orchestration.kubeflow import kubeflow_dag_runner

from pipeline import kubeflow_settings
from pipeline.kubeflow_settings import KubeflowSettings
from pipeline.pipeline import create_pipeline

# KFP names each step after the sanitized component id; "Trainer" becomes "trainer".
TRAINER_STEP = "trainer"
# Steps sized like the Trainer (the optional Tuner trains models too); only the Trainer
# gets the GPU.
TRAINING_STEPS = (TRAINER_STEP, "tuner")


def resources_op(settings: KubeflowSettings) -> kubeflow_dag_runner.OpFunc:
    """CPU/memory requests on every step, the Trainer's own values on the training steps."""

    def apply(op):
        trainer = op.name in TRAINING_STEPS
        container = op.container
        container.set_cpu_request(settings.trainer_cpu_request if trainer else settings.cpu_request)
        container.set_memory_request(
            settings.trainer_memory_request if trainer else settings.memory_request
        )
        limit = settings.trainer_memory_limit if trainer else settings.memory_limit
        if limit:
            container.set_memory_limit(limit)
        return op

    return apply


def trainer_gpu_op(settings: KubeflowSettings) -> kubeflow_dag_runner.OpFunc:
    """GPU limit, accelerator node selector and taint toleration for the Trainer alone."""

    def apply(op):
        if op.name != TRAINER_STEP:
            return op
        if settings.trainer_gpus:
            op.container.set_gpu_limit(str(settings.trainer_gpus))
        for key, value in settings.trainer_node_selector.items():
            op.add_node_selector_constraint(key, value)
        for toleration in settings.trainer_tolerations:
            op.add_toleration(
                k8s_client.V1Toleration(
                    key=toleration.key,
                    operator=toleration.operator,
                    value=toleration.value,
                    effect=toleration.effect,
                )
            )
        return op

    return apply


def operator_funcs(
    settings: KubeflowSettings,
) -> list[kubeflow_dag_runner.OpFunc]:
    """TFX's defaults (metadata ConfigMap, optional GCP secret) plus ours."""
    return kubeflow_dag_runner.get_default_pipeline_operator_funcs(
        use_gcp_sa=settings.use_gcp_secret
    ) + [resources_op(settings), trainer_gpu_op(settings)]


def run() -> None:
    """Builds the settings and compiles create_pipeline into <pipeline_name>.tar.gz."""
    settings = kubeflow_settings.from_env()
    runner_config = kubeflow_dag_runner.KubeflowDagRunnerConfig(
        pipeline_operator_funcs=operator_funcs(settings),
        tfx_image=settings.image,
        kubeflow_metadata_config=kubeflow_dag_runner.get_default_kubeflow_metadata_config(),
        metadata_ui_path=settings.metadata_ui_path,
    )
    kubeflow_dag_runner.KubeflowDagRunner(config=runner_config, output_dir=settings.output_dir).run(
        create_pipeline(**kubeflow_settings.create_pipeline_kwargs(settings))
    )


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    run()
