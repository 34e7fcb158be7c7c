"""The one logger whose records a person sees on the local runner's console.

Everything else (TFX's artifact dumps, Beam and TensorFlow chatter) goes to the run's log
file; a step that takes long says what it is doing here, one short line at a time.
"""

import logging

LOGGER_NAME = "histopath.progress"

logger = logging.getLogger(LOGGER_NAME)
