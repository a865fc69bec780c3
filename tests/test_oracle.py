"""The oracle's density (trainer.world.oracle) on folders that are not usable worlds."""
import logging

from trainer.world.oracle import world_density


def test_a_folder_that_is_no_world_gives_no_oracle_and_says_so_once(tmp_path, caplog):
    (tmp_path / "train.json").write_text("{}")  # a dataset folder, but not a generated world
    with caplog.at_level(logging.INFO, logger="trainer.world.oracle"):
        assert world_density(str(tmp_path), ["a", "b"]) is None
    message = " ".join(r.getMessage() for r in caplog.records)
    assert message.count("is not a world folder") == 1 and "no oracle row" in message
    assert world_density(str(tmp_path / "labels.csv"), ["a"]) is None  # a file spec: no oracle, silently
