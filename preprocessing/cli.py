"""``histo-preprocess`` / ``python -m preprocessing``: an image tree -> a new TFRecord span.

Unknown arguments are Beam pipeline options, so the same command runs on Dataflow, Flink
or Spark (``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...``).
"""

import argparse
import json
import logging
import sys

from modules import quiet
from pipeline import settings
from preprocessing import layouts, patients, splits
from preprocessing.span_summary import format_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="histo-preprocess", description=__doc__)
    parser.add_argument("--input", required=True, help="root folder of the images")
    parser.add_argument("--output", required=True, help="data root that receives span-N/")
    # Defaults: the pipeline's settings (HISTO_LAYOUT, ...), so both write alike spans.
    read = settings.read
    parser.add_argument("--layout", choices=layouts.LAYOUTS, default=read("HISTO_LAYOUT"))
    parser.add_argument(
        "--manifest",
        default=read("HISTO_MANIFEST") or None,
        help="CSV path,label,patient_id[,magnification,subtype]",
    )
    parser.add_argument(
        "--split-ratios", default=read("HISTO_SPLIT_RATIOS"), help="train,eval,test"
    )
    parser.add_argument(
        "--split-salt", default=read("HISTO_SPLIT_SALT"), help="change to draw a different split"
    )
    parser.add_argument(
        "--patient-rule",
        type=patients.validate_rule,
        help="which ids are one patient: breakhis (slide letters dropped, the default), "
        "as-is, regex:<pattern>; default from HISTO_PATIENT_RULE",
    )
    parser.add_argument(
        "--max-reject-fraction", type=float, default=read("HISTO_MAX_REJECT_FRACTION")
    )
    parser.add_argument("--min-side", type=int, default=read("HISTO_MIN_SIDE"))
    parser.add_argument("--max-pixels", type=int, default=read("HISTO_MAX_PIXELS"))
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet.dependency_warnings()
    from preprocessing.beam_job import PreprocessingError, preprocess  # after the filters

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # worker chatter, not progress
    # The DirectRunner relays each worker's start-up notices ("No semi_persistent_directory")
    # as warnings; a failing worker still fails the job with its error.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    args, beam_args = build_parser().parse_known_args(argv)
    try:
        ratios = splits.parse_ratios(args.split_ratios)
        records, rejects = layouts.discover(args.input, args.layout, args.manifest)
        logging.info(
            "found %d images (%d unusable names) under %s",
            len(records) + len(rejects),
            len(rejects),
            args.input,
        )
        summary = preprocess(
            records,
            rejects,
            args.output,
            ratios,
            salt=args.split_salt,
            max_reject_fraction=args.max_reject_fraction,
            beam_args=beam_args,
            min_side=args.min_side,
            max_pixels=args.max_pixels,
            patient_rule=args.patient_rule or patients.configured_rule(),
        )
    except (PreprocessingError, ValueError, OSError) as err:
        print(f"histo-preprocess: error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    for warning in summary["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(json.dumps({"span_dir": summary["span_dir"]}))
    return 0
