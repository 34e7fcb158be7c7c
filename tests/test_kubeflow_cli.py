"""The real TFX CLI and ``python -m kfp_tools.schedule`` against a fake KFP API server.

The commands run as subprocesses with a temporary HOME, exactly as a user types them, and
talk REST v1beta1 to ``fake_kfp_server`` on 127.0.0.1; the server validates every request
body against the ``kfp_server_api`` models. One scenario (create, duplicate create,
update, run create, run list, unknown pipeline, then the schedule commands) runs once per
module, and the tests read its results. Each tfx call imports TensorFlow (~15-30 s).
"""

import http.client
import json
import os
import subprocess
import sys
import tarfile
import urllib.parse

import pytest
import yaml
from fake_kfp_server import FakeKfpServer, check_cron

from histo_testlib import BIN, cli_env
from kfp_tools import schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX = os.path.join(BIN, "tfx")
RUNNER = os.path.join(REPO, "kubeflow_runner.py")
PIPELINE_NAME = "histo-cli-test"
IMAGE = "registry.example.com/histopath/tfx:cli-1"
SETTINGS_ENV = {
    "HISTO_PIPELINE_NAME": PIPELINE_NAME,
    "HISTO_IMAGE": IMAGE,
    "HISTO_BUCKET": "gs://histo-cli-bucket",
}
JOB_NAME = f"{PIPELINE_NAME}-retrain"
SCHEDULED_ROOT = "gs://histo-cli-bucket/scheduled"


class Cli:
    """Runs commands in one working directory and environment, recording each result."""

    def __init__(self, work, server: FakeKfpServer):
        self.work = work
        self.server = server
        self.env = cli_env(str(work / "home"), **SETTINGS_ENV)

    def run(self, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args),
            env=self.env,
            cwd=str(self.work),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def tfx(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(TFX, *args, "--engine", "kubeflow", "--endpoint", self.server.endpoint)

    def schedule(self, *args: str) -> subprocess.CompletedProcess:
        env_args = ["--endpoint", self.server.endpoint]
        return self.run(sys.executable, "-m", "kfp_tools.schedule", *args, *env_args, timeout=90)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Deploys, updates, runs and schedules the pipeline once; yields every result."""
    work = tmp_path_factory.mktemp("kfp_cli")
    (work / "home").mkdir()
    with FakeKfpServer() as server:
        cli = Cli(work, server)
        cli.env["PYTHONPATH"] = REPO  # `python -m kfp_tools.schedule` from the checkout
        out = {"server": server, "work": work}
        compile_dir = work / "compiled"
        compile_dir.mkdir()
        compiled = cli.run(
            TFX, "pipeline", "compile", "--engine", "kubeflow", "--pipeline_path", RUNNER,
            timeout=240,
        )  # fmt: skip
        assert_ok(compiled)
        with tarfile.open(work / f"{PIPELINE_NAME}.tar.gz") as tar:
            out["compiled"] = yaml.safe_load(tar.extractfile("pipeline.yaml"))
        out["create"] = cli.tfx("pipeline", "create", "--pipeline_path", RUNNER)
        out["temp_after_create"] = list(work.glob("temp_*.tar.gz"))
        out["create_again"] = cli.tfx("pipeline", "create", "--pipeline_path", RUNNER)
        out["update"] = cli.tfx("pipeline", "update", "--pipeline_path", RUNNER)
        out["run_create"] = cli.tfx("run", "create", "--pipeline_name", PIPELINE_NAME)
        out["run_list"] = cli.tfx("run", "list", "--pipeline_name", PIPELINE_NAME)
        out["run_unknown"] = cli.tfx("run", "create", "--pipeline_name", "no-such-pipeline")
        requests_before = len(server.state.requests)
        out["cron5"] = cli.schedule("create", "--cron", "0 3 * * *")
        out["requests_after_cron5"] = len(server.state.requests) - requests_before
        out["sched_create"] = cli.schedule(
            "create", "--cron", "0 0 3 * * *", "--param", f"pipeline-root={SCHEDULED_ROOT}"
        )
        out["job_first"] = json.loads(json.dumps(list(server.state.jobs.values())))
        out["sched_replace"] = cli.schedule("create", "--interval-seconds", "86400")
        out["sched_list"] = cli.schedule("list")
        out["sched_disable"] = cli.schedule("disable")
        out["sched_unknown"] = cli.schedule(
            "create", "--pipeline-name", "no-such-pipeline", "--cron", "0 0 3 * * *"
        )
        yield out


def normalized(workflow: dict) -> dict:
    """The workflow minus its compile timestamp, with each step's TFX IR parsed.

    The IR is a JSON string whose map key order changes from one process to the next.
    """
    workflow = json.loads(json.dumps(workflow))
    workflow["metadata"]["annotations"].pop("pipelines.kubeflow.org/pipeline_compilation_time")
    for template in workflow["spec"]["templates"]:
        if "container" in template:
            args = template["container"]["args"]
            args[args.index("--tfx_ir") + 1] = json.loads(args[args.index("--tfx_ir") + 1])
    return workflow


# ---------------------------------------------------------------- tfx pipeline / run


def test_pipeline_create_uploads_the_compiled_workflow(scenario):
    assert_ok(scenario["create"])
    assert f'Pipeline "{PIPELINE_NAME}" created successfully.' in scenario["create"].stdout
    state = scenario["server"].state
    first = state.uploads[0]
    assert (first["kind"], first["name"]) == ("pipeline", PIPELINE_NAME)
    assert first["filename"].startswith(f"temp_{PIPELINE_NAME}")
    assert normalized(first["workflow"]) == normalized(scenario["compiled"])
    names = {t["name"] for t in first["workflow"]["spec"]["templates"]}
    assert {"trainer", "transform", "pusher", "latest-blessed-model-resolver"} <= names
    # tfx also creates the experiment the runs go to, named after the pipeline.
    assert [e["name"] for e in state.experiments.values()] == [PIPELINE_NAME]
    # The CLI removes its temporary package after a successful upload.
    assert scenario["temp_after_create"] == []


def test_second_create_of_the_same_pipeline_is_refused(scenario):
    result = scenario["create_again"]
    pipeline_id = scenario["server"].state.uploads[0]["pipeline_id"]
    assert result.returncode != 0
    assert f'Pipeline "{PIPELINE_NAME}" already exists. id="{pipeline_id}"' in result.stderr
    assert sum(u["kind"] == "pipeline" for u in scenario["server"].state.uploads) == 1


def test_pipeline_update_uploads_a_new_version(scenario):
    assert_ok(scenario["update"])
    state = scenario["server"].state
    first, second = state.uploads
    assert second["kind"] == "version" and second["pipeline_id"] == first["pipeline_id"]
    assert second["name"].startswith(f"{PIPELINE_NAME}_")
    assert normalized(second["workflow"]) == normalized(first["workflow"])
    assert state.pipelines[first["pipeline_id"]]["default_version"]["id"] == second["version_id"]


def test_run_create_runs_the_latest_version_in_the_pipeline_experiment(scenario):
    assert_ok(scenario["run_create"])
    state = scenario["server"].state
    (run,) = state.runs.values()
    assert run["id"] in scenario["run_create"].stdout
    references = {r["key"]["type"]: r["key"]["id"] for r in run["resource_references"]}
    experiment_id = next(iter(state.experiments))
    assert references == {
        "EXPERIMENT": experiment_id,
        "PIPELINE_VERSION": state.uploads[-1]["version_id"],
    }
    assert json.loads(run["pipeline_spec"]["workflow_manifest"]) == state.uploads[-1]["workflow"]


def test_run_list_shows_the_run(scenario):
    assert_ok(scenario["run_list"])
    (run_id,) = scenario["server"].state.runs
    assert run_id in scenario["run_list"].stdout


def test_run_create_for_an_unknown_pipeline_fails(scenario):
    result = scenario["run_unknown"]
    assert result.returncode != 0
    assert 'Cannot find pipeline "no-such-pipeline"' in result.stderr
    assert len(scenario["server"].state.runs) == 1


# ---------------------------------------------------------------- scheduled retraining


def test_five_field_cron_is_refused_before_reaching_the_server(scenario):
    result = scenario["cron5"]
    assert result.returncode == 2
    assert "seconds field first" in result.stderr and "'0 0 3 * * *'" in result.stderr
    assert scenario["requests_after_cron5"] == 0


def test_schedule_create_targets_the_latest_version_once_at_a_time(scenario):
    assert_ok(scenario["sched_create"])
    state = scenario["server"].state
    (job,) = scenario["job_first"]
    assert job["name"] == JOB_NAME
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert (job["max_concurrency"], job["no_catchup"], job["enabled"]) == ("1", True, True)
    references = {r["key"]["type"]: r["key"]["id"] for r in job["resource_references"]}
    assert references == {
        "EXPERIMENT": next(iter(state.experiments)),
        "PIPELINE_VERSION": state.uploads[-1]["version_id"],
    }
    assert job["pipeline_spec"]["parameters"] == [
        {"name": "pipeline-root", "value": SCHEDULED_ROOT}
    ]


def test_schedule_create_again_replaces_the_job_of_the_same_name(scenario):
    assert_ok(scenario["sched_replace"])
    (first,) = scenario["job_first"]
    jobs = list(scenario["server"].state.jobs.values())
    assert [j["name"] for j in jobs] == [JOB_NAME]
    assert jobs[0]["id"] != first["id"]
    assert jobs[0]["trigger"] == {"periodic_schedule": {"interval_second": "86400"}}
    assert f"replaced recurring run {first['id']}" in scenario["sched_replace"].stdout


def test_schedule_list_and_disable(scenario):
    assert_ok(scenario["sched_list"])
    (job,) = scenario["server"].state.jobs.values()
    assert job["id"] in scenario["sched_list"].stdout
    assert "every 86400s" in scenario["sched_list"].stdout
    assert_ok(scenario["sched_disable"])
    assert job["enabled"] is False and job["mode"] == "DISABLED"


def test_schedule_for_an_unknown_pipeline_fails_clearly(scenario):
    result = scenario["sched_unknown"]
    assert result.returncode == 1
    assert 'pipeline "no-such-pipeline" not found' in result.stderr


# ---------------------------------------------------------------- cron validation (client)


@pytest.mark.parametrize(
    "cron", ["0 0 3 * * *", "0 */15 * * * *", "0 30 2 1-7 * MON", "0 0 3 ? * SUN,WED", "@daily"]
)
def test_valid_six_field_crons(cron):
    assert schedule.validate_cron(cron) == cron


@pytest.mark.parametrize(
    "cron, message",
    [
        ("0 3 * * *", "'0 0 3 * * *'"),
        ("0 0 3 * * * *", "needs 6"),
        ("0 0 24 * * *", "hour"),
        ("0 0 3 ? * 7", "day-of-week"),
        ("0 0 3 * * L", "day-of-week"),
        ("0 ? 3 * * *", "minute"),
        ("0 0 3 * * */0", "step"),
        ("@every 24h", "--interval-seconds"),
    ],
)
def test_invalid_crons_are_explained(cron, message):
    with pytest.raises(schedule.CronError, match=message.replace("*", r"\*").replace("?", r"\?")):
        schedule.validate_cron(cron)


def test_client_and_fake_server_agree_on_six_field_crons():
    """The server side of the fake mimics robfig/cron v1, which also takes 5 fields."""
    for cron in ("0 0 3 * * *", "0 30 2 1-7 * MON", "0 3 * * *"):
        check_cron(cron)
    with pytest.raises(ValueError):
        check_cron("0 0 3 * * * *")


# ---------------------------------------------------------------- the fake server itself


@pytest.fixture
def server():
    with FakeKfpServer() as fake:
        yield fake


def post_json(endpoint: str, path: str, body: dict) -> tuple:
    url = urllib.parse.urlsplit(endpoint)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    try:
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_fake_server_answers_errors_like_grpc_gateway(server, tmp_path):
    import kfp
    from kfp_server_api import ApiException

    package = tmp_path / "p.yaml"
    package.write_text(yaml.safe_dump({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow"}))
    client = kfp.Client(host=server.endpoint)
    client.upload_pipeline(str(package), pipeline_name="p")
    with pytest.raises(ApiException) as duplicate:
        client.upload_pipeline(str(package), pipeline_name="p")
    with pytest.raises(ApiException) as missing:
        client.get_pipeline("nope")
    experiment = client.create_experiment("e")
    with pytest.raises(ApiException) as bad_cron:
        client.create_recurring_run(experiment.id, "j", cron_expression="0 0 25 * * *",
                                    pipeline_id=client.get_pipeline_id("p"))  # fmt: skip
    for raised, status, code in ((duplicate, 409, 6), (missing, 404, 5), (bad_cron, 400, 3)):
        body = json.loads(raised.value.body)
        assert raised.value.status == status
        assert body["code"] == code and body["error"] == body["message"]


def test_fake_server_rejects_bodies_the_models_do_not_describe(server):
    ok = post_json(server.endpoint, "/apis/v1beta1/experiments", {"name": "e1"})
    unknown = post_json(server.endpoint, "/apis/v1beta1/experiments", {"name": "e2", "nme": "x"})
    wrong_type = post_json(server.endpoint, "/apis/v1beta1/experiments", {"name": 3})
    bad_enum = post_json(
        server.endpoint,
        "/apis/v1beta1/runs",
        {"name": "r", "resource_references": [{"key": {"type": "EXPERIMENTS", "id": "x"}}]},
    )
    assert ok[0] == 200 and ok[1]["name"] == "e1"
    for status, body in (unknown, wrong_type, bad_enum):
        assert (status, body["code"]) == (400, 3), body
    assert 'unknown field "nme"' in unknown[1]["message"]
