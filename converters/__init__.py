"""geoaware converters: quantized TFLite export and app-ready bundles."""
