"""Datasets: the record type (`dataset`), a data SPEC to its reader (`readers`), the readers of each
format (`inat`, `csv_tables`) and what they share (`rows`), the tuning split (`splits`), all without
TensorFlow, and the tf.data input pipeline with THE image preprocessing spec (`pipeline`)."""
