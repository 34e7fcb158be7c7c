"""The patient rule: which slide ids belong to one patient.

Splits, the leakage gate, the evaluation report and the quality benchmark must agree on
what "one patient" is, or a patient can sit in train and test at once. BreakHis names
slides ``<yy>-<number><letters>`` and slides of one patient share ``<yy>-<number>``
(``14-21998AB``, ``14-21998CD``, ``14-21998EF``), so the default rule drops the letters.

Rules (``--patient-rule`` / ``HISTO_PATIENT_RULE``):
- ``breakhis`` (default): ``14-21998AB`` -> ``14-21998``; ids of another shape unchanged;
- ``as-is``: every id is its own patient;
- ``regex:<pattern>``: the pattern's first group (or whole match) is the patient; ids that
  do not match stay unchanged.
Applying a rule to an id it already produced gives the same id, so the gate can apply it
again to what preprocessing wrote.
"""

import functools
import re

from pipeline import settings

RULE_SETTING = "HISTO_PATIENT_RULE"  # read by histo-preprocess and the pipeline alike
DEFAULT_RULE: str = settings.default(RULE_SETTING)
_BREAKHIS_SLIDE = r"^(\d+-\d+)[A-Za-z]*$"


@functools.lru_cache(maxsize=16)
def _pattern(rule: str) -> re.Pattern | None:
    if rule == "as-is":
        return None
    if rule == "breakhis":
        return re.compile(_BREAKHIS_SLIDE)
    if rule.startswith("regex:"):
        try:
            return re.compile(rule[len("regex:") :])
        except re.error as err:
            raise ValueError(f"patient rule {rule!r}: bad regular expression: {err}") from None
    raise ValueError(f"unknown patient rule {rule!r}: use breakhis, as-is or regex:<pattern>")


def configured_rule() -> str:
    """The rule this deployment uses: ``HISTO_PATIENT_RULE`` or the default."""
    return validate_rule(settings.read(RULE_SETTING))


def validate_rule(rule: str) -> str:
    """Returns the rule, or raises ValueError naming what is wrong with it."""
    _pattern(rule)
    return rule


def patient_of(slide_id: str, rule: str = DEFAULT_RULE) -> str:
    """The patient a slide (or image-level id) belongs to under ``rule``."""
    pattern = _pattern(rule)
    match = pattern.match(slide_id) if pattern else None
    if not match:
        return slide_id
    return match.group(1) if pattern.groups else match.group(0)
