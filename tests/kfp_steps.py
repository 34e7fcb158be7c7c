"""Runs a compiled Kubeflow (Argo) package step by step, as its pods would, on this machine.

Each Argo container is ``python -m tfx.orchestration.kubeflow.container_entrypoint ...``.
This runner orders the DAG, substitutes Argo's ``{{inputs.parameters.pipeline-root}}``,
gives each step the environment a KFP pod gets (MLMD address, workflow id, pod name/uid,
namespace, run id, caching label) and runs its command and args as a subprocess of the
project venv, standing in for the image; steps whose dependencies are done run side by side,
as Argo runs them. Each step gets a fresh UI metadata path, as a
fresh container would, and the file it leaves is read back.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import uuid
from concurrent import futures

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UI_FLAG = "--metadata_ui_path"


@dataclasses.dataclass
class StepResult:
    name: str
    returncode: int
    log: str
    ui_metadata: dict | None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


def load_workflow(package: str) -> dict:
    with tarfile.open(package) as tar:
        return yaml.safe_load(tar.extractfile("pipeline.yaml"))


def ordered_steps(workflow: dict) -> list[tuple[str, dict]]:
    """(task name, container template) in an order that respects every dependency."""
    templates = {t["name"]: t for t in workflow["spec"]["templates"]}
    (dag,) = [t["dag"] for t in workflow["spec"]["templates"] if "dag" in t]
    pending = {task["name"]: task for task in dag["tasks"]}
    done: list[str] = []
    while pending:
        ready = sorted(n for n, t in pending.items() if set(t.get("dependencies", [])) <= set(done))
        if not ready:
            raise ValueError(f"cycle or unknown dependency among {sorted(pending)}")
        done.extend(ready)
        for name in ready:
            del pending[name]
    return [(name, templates[name]) for name in done]


def pod_env(base: dict, mlmd_port: int, run_id: str, step: str) -> dict:
    """What KFP's downward API and the TFX runner put into a pod's environment."""
    env = dict(base)
    env.update(
        METADATA_GRPC_SERVICE_HOST="127.0.0.1",
        METADATA_GRPC_SERVICE_PORT=str(mlmd_port),
        WORKFLOW_ID=run_id,
        KFP_POD_NAME=f"{run_id}-{step}-{uuid.uuid4().hex[:10]}",
        KFP_POD_UID=str(uuid.uuid4()),
        KFP_NAMESPACE="kubeflow",
        KFP_RUN_ID=str(uuid.uuid5(uuid.NAMESPACE_URL, run_id)),
        ENABLE_CACHING="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def substitute(args: list[str], parameters: dict[str, str]) -> list[str]:
    out = []
    for arg in args:
        for name, value in parameters.items():
            arg = arg.replace(f"{{{{inputs.parameters.{name}}}}}", value)
        out.append(arg)
    return out


def dependencies(workflow: dict) -> dict[str, set[str]]:
    """{task name: names of the tasks it waits for} of the workflow's DAG."""
    (dag,) = [t["dag"] for t in workflow["spec"]["templates"] if "dag" in t]
    return {task["name"]: set(task.get("dependencies", [])) for task in dag["tasks"]}


def run_step(
    name: str,
    template: dict,
    parameters: dict,
    *,
    mlmd_port: int,
    run_id: str,
    workdir: str,
    env: dict,
    timeout: int,
) -> StepResult:
    """One Argo container as its pod would run it, with a fresh UI metadata path."""
    container = template["container"]
    command = [sys.executable if c == "python" else c for c in container["command"]]
    args = substitute(container["args"], parameters)
    step_dir = os.path.join(workdir, run_id, name)
    os.makedirs(step_dir)
    ui_path = os.path.join(step_dir, "mlpipeline-ui-metadata.json")
    args[args.index(UI_FLAG) + 1] = ui_path
    process = subprocess.run(
        command + args,
        env=pod_env(env, mlmd_port, run_id, name),
        cwd=REPO,  # the image's WORKDIR holds the repository
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    ui = None
    if os.path.exists(ui_path):
        with open(ui_path) as f:
            ui = json.load(f)
    return StepResult(name, process.returncode, process.stdout + process.stderr, ui)


def run_workflow(
    package: str,
    *,
    mlmd_port: int,
    run_id: str,
    workdir: str,
    env: dict,
    timeout: int = 900,
    parallelism: int | None = None,
) -> list[StepResult]:
    """Runs every step once its dependencies succeeded, ready steps side by side (as Argo
    does, up to ``parallelism``, default one per core). After a failure no new step starts;
    the running ones finish (as Argo does). Results in the order the steps finished."""
    workflow = load_workflow(package)
    parameters = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    templates = dict(ordered_steps(workflow))
    waits_for = dependencies(workflow)
    results: list[StepResult] = []
    succeeded: set[str] = set()
    running: dict[futures.Future, str] = {}
    with futures.ThreadPoolExecutor(max_workers=parallelism or os.cpu_count() or 1) as pool:
        while True:
            failed = any(r.returncode for r in results)
            started = set(running.values()) | {r.name for r in results}
            ready = [n for n in templates if n not in started and waits_for[n] <= succeeded]
            for name in [] if failed else ready:
                future = pool.submit(
                    run_step,
                    name,
                    templates[name],
                    parameters,
                    mlmd_port=mlmd_port,
                    run_id=run_id,
                    workdir=workdir,
                    env=env,
                    timeout=timeout,
                )
                running[future] = name
            if not running:
                return results
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                del running[future]
                result = future.result()
                results.append(result)
                if not result.returncode:
                    succeeded.add(result.name)
