"""How the scores are fused: the bundle's temperature, and the whitelist on top of the model.

The model fuses image and location itself (its `probabilities` output), or, for an image-only bundle
with a geo bundle (`geo_bundle_path`, a geo model trained on observations by
trainer.training.geoprior), the classifier multiplies the image probabilities by the geo model's
score of each label at the location: P(label | location) for a softmax-trained geo model (the
paper's Bayesian prior, eq. 2), the label's presence probability for a presence-only one (vision x
geo, as Mac Aodha et al. 2019 and iNaturalist's app do; mobile_sdk.geo_scores). The paper's
whitelist (eq. 3) comes on top: `hard` drops labels with no training observation within the radius,
`soft` multiplies them by a floor so a stale table can never zero a label out. Scores are then
renormalised to sum to 1 over the labels that remain. Which of off / soft / hard applies is the
bundle's `recommended_fusion` (measured at export on tuning images) unless the options say
otherwise (`Fusion.resolve`; `GeoClassifier.fusion` tells which applies and why).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import GeoClassifierOptions

DEFAULT_SOFT_FLOOR = 0.01
_NO_RECOMMENDATION = {"whitelist": "hard", "floor": None}  # bundles exported before recommended_fusion


@dataclass(frozen=True)
class Fusion:
    """How the whitelist joins the model's output in this classifier, and who chose it."""
    whitelist: str  # "off", "soft" or "hard"
    floor: float | None  # the soft factor (soft only)
    source: str  # "bundle" (its recommended_fusion), "options", or "default" (a bundle without one)

    @classmethod
    def resolve(cls, manifest: dict, options: GeoClassifierOptions) -> "Fusion":
        """Options that are set win over the bundle's recommendation: use_whitelist=False turns it
        off, whitelist_mode picks the mode (use_whitelist=True alone turns an "off" into hard)."""
        recommended = manifest.get("recommended_fusion")
        base = recommended or _NO_RECOMMENDATION
        mode = base["whitelist"]
        if options.use_whitelist is False:
            mode = "off"
        elif options.whitelist_mode is not None:
            mode = options.whitelist_mode
        elif options.use_whitelist and mode == "off":
            mode = "hard"
        floor = options.whitelist_floor if options.whitelist_floor is not None else \
            base.get("floor") or DEFAULT_SOFT_FLOOR
        overridden = any(v is not None for v in (options.use_whitelist, options.whitelist_mode, options.whitelist_floor))
        return cls(mode, float(floor) if mode == "soft" else None,
                   "options" if overridden else "bundle" if recommended else "default")

    def apply(self, probs: np.ndarray, logits: np.ndarray | None, mask: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """(scores, whether the whitelist changed them): `probs` with the labels outside `mask`
        removed (hard) or multiplied by the floor (soft), renormalised. A mask that allows every
        label or none (or None) has no say."""
        allowed = None if mask is None else mask.nonzero()[0]  # (integer indexing: cheaper than the mask's)
        if allowed is None or not 0 < allowed.size < mask.size:
            return probs, False
        hard = self.whitelist == "hard"
        if logits is not None:  # softmax(logits + log w): exact even where a probability underflowed
            if hard:  # log 0 = -inf outside: exactly 0 there, the softmax of the allowed logits inside
                scores = np.zeros(mask.size)
                scores[allowed] = softmax(logits[allowed])
                return scores, True
            return softmax(logits + np.log(np.where(mask, 1.0, self.floor))), True
        weighted = probs * (mask.astype(np.float64) if hard else np.where(mask, 1.0, self.floor))
        if weighted.sum() > 0:  # else the model gave the allowed labels nothing: keep it
            return weighted / weighted.sum(), True
        return probs, False


def tempered(out: dict, temperature: float) -> dict:
    """The model's outputs with logits / T and the probabilities recomputed from them (temperature
    scaling: the ranking is unchanged, the confidences are calibrated)."""
    logits = out["logits"] if "logits" in out else np.log(np.maximum(out["probabilities"], np.finfo(np.float32).tiny))
    logits = logits.astype(np.float64) / temperature
    return {**out, "logits": logits, "probabilities": softmax(logits.reshape(-1)).reshape(logits.shape)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64; -inf logits (labels removed by a hard whitelist) get exactly 0."""
    e = logits.astype(np.float64)  # a copy, then in place: the same arithmetic, fewer allocations
    e -= np.maximum.reduce(e)  # = e.max(), e.sum(): the same reductions without two Python layers each
    np.exp(e, out=e)
    e /= np.add.reduce(e)
    return e
