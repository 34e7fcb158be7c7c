"""Scheduled retraining on Kubeflow Pipelines v1: create, list, disable, delete.

    python -m kfp_tools.schedule create --endpoint URL --cron "0 0 3 * * *"
    python -m kfp_tools.schedule create --endpoint URL --interval-seconds 86400
    python -m kfp_tools.schedule list --endpoint URL
    python -m kfp_tools.schedule disable --endpoint URL

``create`` points a recurring run at the LATEST version of the pipeline (the one the last
``tfx pipeline update`` uploaded), with at most one run at a time and no catch-up after a
pause. It replaces any recurring run of the same name in the experiment, so running it
again after ``tfx pipeline update`` moves the schedule to the new version.

KFP's cron has a seconds field first (six fields): daily at 03:00 is ``0 0 3 * * *``.
A five-field crontab line is refused here, because KFP would read its first field as
seconds and run at other times than meant.
"""

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_FIELDS = (  # name, lowest, highest, names usable instead of numbers
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())),
    ("day-of-week", 0, 6, ("SUN MON TUE WED THU FRI SAT".split())),
)
EQUALS = 1  # Filter.Op.EQUALS in the KFP v1 API


class CronError(ValueError):
    """A cron expression KFP would reject or misread."""


def _cron_number(text: str, field: str, low: int, names: Sequence[str]) -> int:
    if text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number")
    return int(text)


def _check_field(text: str, field: str, low: int, high: int, names: Sequence[str]) -> None:
    for part in text.split(","):
        span, slash, step = part.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise CronError(f"{field}: step {step!r} in {part!r} must be a positive number")
        if span == "*" or (span == "?" and field.startswith("day")):
            continue
        first_text, dash, last_text = span.partition("-")
        first = _cron_number(first_text, field, low, names)
        last = _cron_number(last_text, field, low, names) if dash else first
        if not low <= first <= last <= high:
            raise CronError(f"{field}: {span!r} is outside {low}-{high}")


def validate_cron(expression: str) -> str:
    """Returns the expression when KFP (robfig/cron, seconds first) reads it as written."""
    expression = " ".join(expression.split())
    if expression.startswith("@"):
        if expression in DESCRIPTORS:
            return expression
        if expression.startswith("@every"):
            raise CronError(f"{expression!r}: use --interval-seconds for a fixed period")
        raise CronError(f"{expression!r}: unknown descriptor; known: {', '.join(DESCRIPTORS)}")
    fields = expression.split(" ")
    if len(fields) == 5:
        raise CronError(
            f"{expression!r} has 5 fields, but KFP cron has a seconds field first "
            "(second minute hour day-of-month month day-of-week), so KFP would read your "
            f"minute as seconds. For the usual crontab meaning pass: '0 {expression}'"
        )
    if len(fields) != 6:
        raise CronError(
            f"{expression!r} has {len(fields)} fields; KFP cron needs 6: "
            "second minute hour day-of-month month day-of-week (daily 03:00 = '0 0 3 * * *')"
        )
    for text, (field, low, high, names) in zip(fields, CRON_FIELDS, strict=True):
        _check_field(text, field, low, high, names)
    return expression


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``["name=value", ...]`` -> dict; runtime parameters for every scheduled run."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param expects name=value, got {pair!r}")
        params[name] = value
    return params


def default_pipeline_name() -> str:
    """Same default as the runners (the settings table loads without TensorFlow)."""
    from pipeline import settings

    return settings.read("HISTO_PIPELINE_NAME")


# ---------------------------------------------------------------- KFP calls


def make_client(args: argparse.Namespace) -> Any:
    import kfp

    return kfp.Client(host=args.endpoint, client_id=args.iap_client_id, namespace=args.namespace)


def latest_version(client: Any, pipeline_name: str) -> Any:
    """The newest uploaded version of the named pipeline; exits if there is none."""
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        raise LookupError(
            f'pipeline "{pipeline_name}" not found; create it first with '
            "tfx pipeline create --engine kubeflow --pipeline_path kubeflow_runner.py"
        )
    response = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
    if not response.versions:
        raise LookupError(f'pipeline "{pipeline_name}" has no versions')
    return response.versions[0]


def find_experiment(client: Any, name: str, namespace: str | None) -> Any | None:
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace)
    except ValueError as error:  # the kfp client's "No experiment is found with name"
        if str(error).startswith("No experiment is found"):
            return None
        raise


def jobs_named(client: Any, experiment_id: str, name: str | None) -> Iterator[Any]:
    """Every recurring run in the experiment, or those called ``name``, across pages."""
    query = (
        json.dumps({"predicates": [{"op": EQUALS, "key": "name", "stringValue": name}]})
        if name
        else None
    )
    token = ""
    while True:
        response = client.list_recurring_runs(
            page_token=token, page_size=100, experiment_id=experiment_id, filter=query
        )
        for job in response.jobs or []:
            if name is None or job.name == name:
                yield job
        token = response.next_page_token
        if not token:
            return


def _describe_trigger(job: Any) -> str:
    trigger = job.trigger
    if trigger and trigger.cron_schedule:
        return f"cron '{trigger.cron_schedule.cron}'"
    if trigger and trigger.periodic_schedule:
        return f"every {trigger.periodic_schedule.interval_second}s"
    return "-"


def _version_of(job: Any) -> str:
    for ref in job.resource_references or []:
        if ref.key.type == "PIPELINE_VERSION":
            return ref.key.id
    return "-"


def _print_jobs(jobs: list[Any]) -> None:
    rows = [("id", "name", "enabled", "schedule", "version", "created_at")]
    for job in jobs:
        created = job.created_at.isoformat() if job.created_at else "-"
        rows.append(
            (job.id, job.name, str(job.enabled), _describe_trigger(job), _version_of(job), created)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


# ---------------------------------------------------------------- subcommands


def create(client: Any, args: argparse.Namespace) -> int:
    """Creates the new recurring run, then removes the old ones of the same name."""
    cron = validate_cron(args.cron) if args.cron else None
    params = parse_params(args.param)
    version = latest_version(client, args.pipeline_name)
    experiment = client.create_experiment(args.experiment, namespace=args.namespace_for_api)
    old_jobs = list(jobs_named(client, experiment.id, args.job_name))
    # New first: if the server refuses it, the old schedule keeps running.
    job = client.create_recurring_run(
        experiment_id=experiment.id,
        job_name=args.job_name,
        description=f"Scheduled retraining of {args.pipeline_name} (version {version.name})",
        cron_expression=cron,
        interval_second=args.interval_seconds,
        max_concurrency=1,
        no_catchup=True,
        params=params,
        version_id=version.id,
        enabled=True,
        service_account=args.service_account,
    )
    for old in old_jobs:
        client.delete_job(old.id)
        print(f"replaced recurring run {old.id} ({_describe_trigger(old)})")
    print(
        f'created recurring run {job.id} "{job.name}": {_describe_trigger(job)}, '
        f"pipeline version {version.id} ({version.name}), max_concurrency=1, no_catchup"
    )
    return 0


def list_jobs(client: Any, args: argparse.Namespace) -> int:
    experiment = find_experiment(client, args.experiment, args.namespace_for_api)
    jobs = list(jobs_named(client, experiment.id, None)) if experiment else []
    if not jobs:
        print(f'no recurring runs in experiment "{args.experiment}"')
        return 0
    _print_jobs(jobs)
    return 0


def _matching_jobs(client: Any, args: argparse.Namespace) -> list[Any]:
    experiment = find_experiment(client, args.experiment, args.namespace_for_api)
    jobs = list(jobs_named(client, experiment.id, args.job_name)) if experiment else []
    if not jobs:
        raise LookupError(f'no recurring run "{args.job_name}" in experiment "{args.experiment}"')
    return jobs


def disable(client: Any, args: argparse.Namespace) -> int:
    for job in _matching_jobs(client, args):
        client.disable_job(job.id)
        print(f"disabled recurring run {job.id} ({_describe_trigger(job)})")
    return 0


def delete(client: Any, args: argparse.Namespace) -> int:
    for job in _matching_jobs(client, args):
        client.delete_job(job.id)
        print(f"deleted recurring run {job.id} ({_describe_trigger(job)})")
    return 0


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kfp_tools.schedule",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT)")
    common.add_argument("--iap-client-id", help="OAuth client id of an IAP-protected endpoint")
    common.add_argument("-n", "--namespace", default="kubeflow", help="KFP system namespace")
    common.add_argument("--user-namespace", help="multi-user KFP: the profile namespace")
    common.add_argument("--pipeline-name", help="default: $HISTO_PIPELINE_NAME (docs/settings.md)")
    common.add_argument("--experiment", help="default: the pipeline name (as tfx run create)")
    common.add_argument("--job-name", help="default: <pipeline name>-retrain")
    commands = parser.add_subparsers(dest="command", required=True)

    create_parser = commands.add_parser("create", parents=[common], help=create.__doc__)
    when = create_parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="6 fields, seconds first: '0 0 3 * * *' = daily 03:00")
    when.add_argument("--interval-seconds", type=int, help="fixed period instead of cron")
    create_parser.add_argument(
        "--param", action="append", default=[], help="runtime parameter name=value (repeatable)"
    )
    create_parser.add_argument("--service-account", help="Kubernetes service account of runs")
    commands.add_parser("list", parents=[common], help="list recurring runs of the experiment")
    commands.add_parser("disable", parents=[common], help="disable the recurring run(s)")
    commands.add_parser("delete", parents=[common], help="delete the recurring run(s)")
    return parser


def _fill_defaults(args: argparse.Namespace) -> None:
    args.pipeline_name = args.pipeline_name or default_pipeline_name()
    args.experiment = args.experiment or args.pipeline_name
    args.job_name = args.job_name or f"{args.pipeline_name}-retrain"
    args.namespace_for_api = args.user_namespace
    if getattr(args, "interval_seconds", None) is not None and args.interval_seconds <= 0:
        raise ValueError("--interval-seconds must be positive")


def _api_message(error: Exception) -> str:
    body = getattr(error, "body", None)
    try:
        data = json.loads(body)
        return data.get("message") or data.get("error") or data.get("error_message") or body
    except (TypeError, ValueError, AttributeError):
        return str(body or error)


COMMANDS = {"create": create, "list": list_jobs, "disable": disable, "delete": delete}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _fill_defaults(args)
        if args.command == "create" and args.cron:
            validate_cron(args.cron)  # before connecting: a bad cron never reaches the server
        return COMMANDS[args.command](make_client(args), args)
    except (CronError, LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, CronError) else 1
    except Exception as error:  # kfp_server_api.ApiException and connection errors
        status = getattr(error, "status", None)
        if status is None:
            raise
        print(f"error: KFP API answered {status}: {_api_message(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
