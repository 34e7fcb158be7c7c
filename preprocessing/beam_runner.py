"""The Beam engine of local and in-pod runs, chosen explicitly rather than by a download.

Beam 2.74's DirectRunner first tries to download and start its Prism runner and falls
back silently when that fails (always, offline), so ``--runner=DirectRunner`` runs on one
engine here and possibly on another on a cluster with internet access. ``FnApiDirectRunner``
is the batch engine the DirectRunner falls back to (Beam's FnApiRunner, in memory or
multi-processing per ``--direct_running_mode``, with the pipeline options handed to its
workers as the DirectRunner does), minus the attempt: the engine every test here measured.
"""

from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

# The --runner value: Beam imports a dotted class path (this module is in the image).
RUNNER_ARG = "--runner=preprocessing.beam_runner.FnApiDirectRunner"


class FnApiDirectRunner(fn_runner.FnApiRunner):
    """Beam's FnApiRunner, given the pipeline options as the DirectRunner gives them."""

    def run_pipeline(self, pipeline, options):
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
        )
        return super().run_pipeline(pipeline, options)
