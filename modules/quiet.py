"""Warning filters for the project's entry points (CLI, runners, benchmarks).

Beam's GCP dependencies warn at import that this Python is no longer supported (a
FutureWarning per google package, in this process and in each Beam worker subprocess,
which inherits the environment); TF/TFX add deprecation notices. None is the user's
concern, so entry points call this before importing them.
"""

import os
import warnings

FILTERS = "ignore::DeprecationWarning,ignore::FutureWarning"


def dependency_warnings() -> None:
    """Silences them here and in the subprocesses started from here."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
    os.environ.setdefault("PYTHONWARNINGS", FILTERS)
