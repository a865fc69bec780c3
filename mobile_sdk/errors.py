"""Every error the SDK raises derives from GeoAwareError, so an app can catch one type.

Each subclass also derives from the builtin it refines (ValueError, OSError) so generic
handlers keep working.
"""


class GeoAwareError(Exception):
    """Base class of every geoaware error."""


class InvalidLocationError(GeoAwareError, ValueError):
    """A latitude/longitude that is not finite, not numeric, out of range, or half given."""


class InvalidImageError(GeoAwareError, ValueError):
    """An image of the wrong rank, channel count or dtype, empty, or undecodable."""


class ModelError(GeoAwareError, OSError):
    """A model file that is missing, truncated, corrupted or has the wrong signature."""


class BundleError(GeoAwareError, OSError):
    """A bundle folder that is missing files or whose manifest is malformed."""


class BundleIntegrityError(BundleError):
    """A bundle file whose sha256 does not match the manifest."""


class WhitelistTableError(GeoAwareError, OSError):
    """A whitelist table that is missing, truncated, corrupted or of an unknown version."""


class LabelSetMismatchError(GeoAwareError, ValueError):
    """A whitelist table built for another label set than the model's."""


class InvalidOptionsError(GeoAwareError, ValueError):
    """A GeoClassifierOptions field or call argument (max_results, label names) that is not allowed."""


class ReplaceRefusedError(GeoAwareError, FileExistsError):
    """A command was asked to write over a folder it did not write itself (or without --force)."""

