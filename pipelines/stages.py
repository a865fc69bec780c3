"""The resumable stage engine behind `make demo` and `make bench`: each stage is a command line
(`python -m ...`) or a library call, stamped when it succeeded so that a rerun reuses it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mobile_sdk.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the command to rerun."""


def run_cli(args: list[str], stdout_log: Path | None = None) -> None:
    """Run `python -m ...` with the same interpreter. Progress bars (stderr) stream to the terminal;
    stdout too, unless `stdout_log` is given (then it goes to that file)."""
    args = [str(a) for a in args]
    print("    $ python -m " + " ".join(args) + (f" > {stdout_log}" if stdout_log else ""), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if stdout_log is not None:
        Path(stdout_log).parent.mkdir(parents=True, exist_ok=True)
    with open(stdout_log, "w") if stdout_log else open(os.devnull) as log:
        completed = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                                   stdout=log if stdout_log else None)
    if completed.returncode != 0:
        raise StageError(f"`python -m {' '.join(args)}` failed with exit code {completed.returncode}")


@dataclass
class Stage:
    """One resumable step. `key` identifies what it computes: for a command stage (`run` None) it is
    the command line itself (`python -m KEY...`, stdout to `stdout_log` when given); a library stage passes
    `run`. `outputs` must exist when it is done; `stale` are paths to delete when a finished earlier
    version of the stage (other key, or other upstream stages) would otherwise be resumed as if it
    were this one."""

    name: str
    key: list | str
    outputs: list[Path]
    run: Callable[[], object] | None = None
    description: str = ""
    stale: list[Path] = field(default_factory=list)
    stdout_log: Path | None = None


@dataclass
class Runner:
    """Runs stages in order. A stage is reused when its stamp holds the same key *and* the same
    upstream digest (the keys and run tokens of every stage before it). Each time a stage really
    runs it gets a fresh token, so changing or redoing a stage reruns everything that follows.
    `cli` runs command stages (tests pass a fake one)."""

    out: Path
    cli: Callable[[list, Path | None], None] = run_cli
    started: float = field(default_factory=time.monotonic)
    log: list[tuple[str, str, float]] = field(default_factory=list)  # (stage, "ran"/"reused", seconds)
    upstream: str = ""  # digest of the keys and run tokens of the stages run or reused so far
    seen: set = field(default_factory=set)  # stage names handled in this run

    @property
    def stamps(self) -> Path:
        return self.out / ".stamps"

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def header(self, text: str) -> None:
        print(f"\n=== [{self.elapsed()}] {text}", flush=True)

    def _stamp(self, stage: Stage) -> dict | None:
        try:
            return json.loads((self.stamps / f"{stage.name}.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _advance(self, stage: Stage, token: str) -> None:
        self.upstream = hashlib.sha256(json.dumps([self.upstream, stage.name, stage.key, token]).encode()).hexdigest()[:16]

    def stage(self, stage: Stage):
        """Run `stage` unless its stamp says it is done. Returns what stage.run returned (None
        when reused)."""
        if stage.name in self.seen:  # asked again in the same run (e.g. the bench's world): done
            return None
        self.seen.add(stage.name)
        self.header(f"{stage.name}: {stage.description}")
        identity = {"key": stage.key, "upstream": self.upstream}
        stamp = self._stamp(stage)
        if stamp is not None and {k: stamp.get(k) for k in identity} == identity \
                and all(Path(p).exists() for p in stage.outputs):
            print(f"    reusing {', '.join(str(p) for p in stage.outputs)} (delete {self.stamps / stage.name}.json to redo)")
            self._advance(stage, stamp.get("token", ""))
            self.log.append((stage.name, "reused", 0.0))
            return None
        if stamp is not None:  # finished before with other inputs: never resume from that
            for path in stage.stale:
                shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
        (self.stamps / f"{stage.name}.json").unlink(missing_ok=True)  # a half-finished rerun must not look done
        begin = time.monotonic()
        result = stage.run() if stage.run is not None else self.cli(stage.key, stage.stdout_log)
        seconds = time.monotonic() - begin
        missing = [str(p) for p in stage.outputs if not Path(p).exists()]
        if missing:
            raise StageError(f"stage {stage.name} finished but did not write {missing}")
        token = uuid.uuid4().hex
        atomic_write_text(self.stamps / f"{stage.name}.json",
                          json.dumps({**identity, "token": token, "seconds": round(seconds, 1)}))
        self._advance(stage, token)
        self.log.append((stage.name, "ran", seconds))
        print(f"    done in {seconds:.0f} s", flush=True)
        return result
