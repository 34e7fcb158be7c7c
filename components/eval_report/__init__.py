"""The per-run evaluation report: one self-contained HTML page built from TFMA's output.

``tfma_reader`` turns TFMA's metrics, plots and validation into plain data, ``derive`` the
few numbers TFMA does not write itself (curve points, calibration error, the patient-level
view), ``sources`` the data and model facts, ``charts`` draws, ``html_report`` lays out,
and ``component`` is the TFX component.
"""
