"""Beam job: a folder of histopathology images -> a new span of gzipped tf.Example TFRecords."""
