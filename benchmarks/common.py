"""Shared benchmark helpers: timing medians, the machine, Markdown tables and target verdicts."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Timing:
    """Seconds per call over `repeats` timed runs (after warm-up)."""

    median: float
    p10: float
    p90: float
    repeats: int

    def ms(self) -> str:
        return f"{self.median * 1e3:.3f} ms (p10 {self.p10 * 1e3:.3f}, p90 {self.p90 * 1e3:.3f}, n={self.repeats})"


def time_calls(fn, repeats: int = 30, warmup: int = 3) -> Timing:
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - begin)
    return timing_of(samples)


def timing_of(samples) -> Timing:
    samples = sorted(samples)
    if not samples:
        raise ValueError("no timing samples")
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return Timing(statistics.median(samples), pick(0.1), pick(0.9), len(samples))


def interleaved(fns: dict, repeats: int = 30, warmup: int = 3, clock=time.perf_counter) -> dict[str, Timing]:
    """Time several callables side by side, alternating them each round, so that a load spike on
    this shared machine hits all of them alike and their ratios stay honest. `clock=time.process_time`
    counts only this process's CPU time: close to what an idle machine would show."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            begin = clock()
            fn()
            samples[name].append(clock() - begin)
    return {name: timing_of(values) for name, values in samples.items()}


REPO = Path(__file__).resolve().parents[1]


def shown_path(path) -> str:
    """A path as the docs may print it: relative to the repository, never a machine's absolute path."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(Path("...", *path.parts[-3:]))


def machine() -> str:
    """One line describing where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = ", load avg %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, Python {platform.python_version()}{load}"


@dataclass(frozen=True)
class Target:
    """One benchmark target: met is True/False, or None when the benchmark did not run it.

    `key` is the target's stable machine name in docs/benchmarks.json; `value` is what was measured
    and `limit` the bound it is held to (a number, or [low, high] for a range)."""

    name: str
    met: bool | None
    detail: str
    key: str | None = None
    value: float | None = None
    limit: float | list | None = None

    def line(self) -> str:
        verdict = {True: "MET", False: "MISSED", None: "NOT RUN"}[self.met]
        return f"- **{verdict}** {self.name}: {self.detail}"

    def record(self, command: str) -> dict:
        """The target's object in docs/benchmarks.json."""
        return {"name": self.key, "value": self.value, "limit": self.limit, "met": self.met, "command": command}


@dataclass
class Section:
    """A benchmark's Markdown section and the targets it decided."""

    title: str
    body: str
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        text = f"## {self.title}\n\n{self.body.strip()}\n"
        if self.targets:
            text += "\nTargets:\n\n" + "\n".join(t.line() for t in self.targets) + "\n"
        return text + f"\n_Section time: {self.seconds:.0f} s._\n"


def ratio_target(name: str, numerator: float, denominator: float, limit: float, what: str, why_missed: str = "",
                 key: str | None = None) -> Target:
    """`numerator/denominator <= limit` as a Target, stating the measured ratio."""
    ratio = numerator / denominator
    detail = f"{what} = {ratio:.3f}x (limit {limit:g}x)"
    if ratio > limit and why_missed:
        detail += f". Why: {why_missed}"
    return Target(name, ratio <= limit, detail, key=key, value=round(ratio, 4), limit=limit)
