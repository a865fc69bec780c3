"""geoaware mobile SDK: on-device-equivalent inference for geo-aware bundles (numpy + LiteRT only).

Never imports TensorFlow (tests/test_sdk.py checks it in a subprocess).
"""
from .answers import Excluded  # noqa: F401
from .bundle import Bundle, open_bundle  # noqa: F401
from .classifier import GeoClassifier  # noqa: F401
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
from .options import GeoClassifierOptions  # noqa: F401
from .preprocess import load_image, resize_image  # noqa: F401
from .results import Category, ClassificationResult, NearbySpecies  # noqa: F401
from .taxonomy import Taxon, Taxonomy  # noqa: F401
from .whitelist.builder import build_whitelist, write_whitelist  # noqa: F401
from .whitelist.reader import WhitelistTable  # noqa: F401
