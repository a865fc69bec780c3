"""The on-disk cache behind every model-over-a-dataset pass (evaluation probabilities, frozen logits)."""
import numpy as np

from trainer.evaluation.inference import cached_arrays


def test_cached_arrays_compute_once_then_load(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"probabilities": np.arange(6, dtype=np.float32).reshape(3, 2)}

    path = tmp_path / "cache" / "run.npz"
    first = cached_arrays(path, compute, {"probabilities": (3, 2)})
    again = cached_arrays(path, compute, {"probabilities": (3, 2)})
    assert len(calls) == 1 and np.array_equal(first["probabilities"], again["probabilities"])
    assert [p.name for p in path.parent.iterdir()] == ["run.npz"]  # written atomically: no temp left


def test_a_cache_of_other_shapes_is_recomputed_and_no_path_means_no_cache(tmp_path):
    path = tmp_path / "run.npz"
    cached_arrays(path, lambda: {"probabilities": np.zeros((3, 2))})
    fresh = cached_arrays(path, lambda: {"probabilities": np.ones((4, 2))}, {"probabilities": (4, 2)})
    assert fresh["probabilities"].shape == (4, 2)
    calls = []
    for _ in range(2):
        cached_arrays(None, lambda: calls.append(1) or {"x": np.zeros(1)})
    assert len(calls) == 2
