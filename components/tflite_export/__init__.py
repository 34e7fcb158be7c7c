"""TFLite export of the trained classifier, gated on parity with the SavedModel.

``convert`` makes the TFLite model, ``runtime`` runs it (and is what a Python client
copies), ``parity`` compares it with the SavedModel, ``component`` holds the two TFX
components: the export with its gate, and the push of a passing model next to the pushed
SavedModel.
"""
