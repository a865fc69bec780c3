"""trainer.data.splits: the one tuning split used by training, prepare and evaluation."""
import numpy as np
import pytest

from trainer.data.splits import SplitError, tuning_split


def test_tuning_split_is_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 10)
    tune, rest = tuning_split(labels, 0.3, seed=1)
    assert len(np.intersect1d(tune, rest)) == 0 and len(tune) + len(rest) == 40
    assert np.bincount(labels[tune]).tolist() == [3, 3, 3, 3]
    np.testing.assert_array_equal(tuning_split(labels, 0.3, seed=1)[0], tune)
    assert not np.array_equal(tuning_split(labels, 0.3, seed=2)[0], tune)
    with pytest.raises(SplitError, match="fraction"):
        tuning_split(labels, 1.0)
    with pytest.raises(SplitError, match="cannot split"):
        tuning_split(np.arange(3), 0.3)  # one image per label: nothing left to tune on
    assert issubclass(SplitError, ValueError)  # the CLIs report ValueErrors as clear errors
