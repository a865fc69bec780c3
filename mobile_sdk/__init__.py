"""geoaware mobile SDK: on-device-equivalent inference for geo-aware bundles (numpy + LiteRT only).

Never imports TensorFlow (tests/test_sdk.py checks it in a subprocess).
"""
from .answers import Excluded  # noqa: F401
from .bundle import Bundle, open_bundle  # noqa: F401
from .classifier import (  # noqa: F401
    Category,
    ClassificationResult,
    GeoClassifier,
    GeoClassifierOptions,
    NearbySpecies,
)
from .errors import (  # noqa: F401
    BundleError,
    BundleIntegrityError,
    GeoAwareError,
    InvalidImageError,
    InvalidLocationError,
    InvalidOptionsError,
    LabelSetMismatchError,
    ModelError,
    WhitelistTableError,
)
from .preprocess import load_image, resize_image  # noqa: F401
from .taxonomy import Taxon, Taxonomy  # noqa: F401
from .whitelist.builder import build_whitelist, write_whitelist  # noqa: F401
from .whitelist.reader import WhitelistTable  # noqa: F401
