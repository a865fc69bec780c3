"""geoaware mobile SDK: on-device-equivalent inference for geo-aware bundles (numpy + LiteRT only)."""
from .errors import (  # noqa: F401
    BundleError,
    BundleIntegrityError,
    GeoAwareError,
    InvalidImageError,
    InvalidLocationError,
    LabelSetMismatchError,
    ModelError,
    WhitelistTableError,
)
