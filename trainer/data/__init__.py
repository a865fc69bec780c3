"""Datasets: the readers of every supported format (`readers`), the tuning split (`splits`), both
without TensorFlow, and the tf.data input pipeline with THE image preprocessing spec (`pipeline`)."""
