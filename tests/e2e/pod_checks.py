"""What the two-pod fault scenario shows: per-pod downloads, checkpoint sizes, the resume and its loss curve.

`scenario_checks` are asserted by tests/e2e/test_two_pods.py and reported by bench/scale_traffic.py and
`python -m tests.e2e.pod_checks` (which can measure another checkout: PYTHONPATH=/other/checkout/pkg).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.pods import PodCluster, code_root
from tests.e2e.s3_servers import is_metadata
from tests.e2e.scenario import Scenario, fault_scenario, input_prefixes

# --- what the scenario shows ---------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def input_reads(scenario: Scenario, phase: str) -> dict[str, dict[str, int]]:
    """Pod -> input object -> whole-object downloads (uploaded inputs and the shared cache/), in one phase."""
    prefixes = input_prefixes(scenario)
    return {pod: dict(sorted(t.downloads(scenario.sizes, lambda k: k.startswith(prefixes)).items()))
            for pod, t in scenario.traffic[phase].items()}


def resume_reads(scenario: Scenario) -> dict[str, dict[str, int]]:
    """Pod -> checkpoint object present at the restart -> downloads, until the resumed job's first checkpoint write."""
    present = scenario.restart_checkpoints
    return {pod: dict(sorted(t.downloads(scenario.sizes, lambda k: k in present,
                                         before=scenario.resume_window_end).items()))
            for pod, t in scenario.traffic["resume"].items()}


def _over_once(reads: dict[str, dict[str, int]], metadata: bool) -> dict[str, dict[str, int]]:
    return {pod: {k: n for k, n in counts.items() if n > 1 and is_metadata(k) == metadata}
            for pod, counts in reads.items() if any(n > 1 and is_metadata(k) == metadata for k, n in counts.items())}


def scenario_checks(scenario: Scenario, tolerance: float = 1e-4, checkpoint_factor: float = 1.2) -> list[Check]:
    """The issue's three properties, each as a check with the figures behind it."""
    checks: list[Check] = []
    for phase in ("reference", "start", "resume"):
        reads = input_reads(scenario, phase)
        over = _over_once(reads, metadata=False)
        checks.append(Check(f"{phase}: every input object downloaded at most once per pod", not over,
                            f"over once: {over}" if over else "ok"))
    for step, files in scenario.checkpoint_sizes.items():
        total, engine = sum(files.values()), scenario.engine_sizes[step]
        checks.append(Check(
            f"checkpoint step-{step}: bytes <= {checkpoint_factor} x rank-0 engine.pt",
            engine > 0 and total <= checkpoint_factor * engine,
            f"{total} bytes in the step, engine.pt {engine} bytes ({total / max(engine, 1):.2f}x); "
            f"per rank {per_rank_sizes(files)}"))
    resumed, killed_at = scenario.resumed_from_step, scenario.killed_after_step
    checks.append(Check("resumed from the newest complete checkpoint",
                        resumed is not None and resumed >= killed_at,
                        f"resumed_from_step={resumed}, step-{killed_at} was complete before the kill"))
    whole, again = scenario.losses[scenario.reference], scenario.losses[scenario.killed]
    same_steps = [s for s, _ in whole] == [s for s, _ in again]
    delta = max((abs(a - b) for (_, a), (_, b) in zip(whole, again, strict=False)), default=math.inf)
    checks.append(Check(f"loss curve equals the uninterrupted run's (max |delta| <= {tolerance:g})",
                        same_steps and delta <= tolerance,
                        f"steps equal: {same_steps}, max |delta| {delta:.2e}"))
    over = _over_once(resume_reads(scenario), metadata=False)
    checks.append(Check("resume: every checkpoint object downloaded at most once per pod", not over,
                        f"over once: {over}" if over else "ok"))
    return checks


def per_rank_sizes(files: dict[str, int]) -> dict[str, int]:
    """Bytes per rank directory (rank-0, rank-1, ...) of one checkpoint step."""
    totals: Counter[str] = Counter()
    for key, size in files.items():
        totals[key.split("/", 1)[0]] += size
    return dict(sorted(totals.items(), key=lambda item: (len(item[0]), item[0])))


def report(scenario: Scenario) -> str:
    """The figures behind the checks, for a person: per-pod downloads, checkpoint bytes, loss curves."""
    lines = [f"phases (s): { {k: round(v, 1) for k, v in scenario.seconds.items()} }"]
    for phase in ("reference", "start", "resume"):
        lines.append(f"[{phase}] input downloads per pod (object: count; * = metadata):")
        for pod, counts in input_reads(scenario, phase).items():
            shown = ", ".join(f"{k}{'*' if is_metadata(k) else ''}: {n}" for k, n in counts.items())
            lines.append(f"  {pod}: {shown or '(none)'}")
    lines.append(f"[resume] checkpoint objects in the store at the restart: {len(scenario.restart_checkpoints)}; "
                 "downloads per pod before the first new checkpoint write:")
    for pod, counts in resume_reads(scenario).items():
        shown = ", ".join(f"{k.removeprefix(f'runs/{scenario.killed}/checkpoints/')}{'*' if is_metadata(k) else ''}:"
                          f" {n}" for k, n in counts.items())
        lines.append(f"  {pod}: {shown or '(none)'}")
    for step, files in scenario.checkpoint_sizes.items():
        lines.append(f"[checkpoint step-{step}] {sum(files.values())} bytes, rank-0 engine.pt "
                     f"{scenario.engine_sizes[step]} bytes; per rank {per_rank_sizes(files)}")
        lines.append("  objects: " + ", ".join(f"{k}={v}" for k, v in files.items()))
    for phase, pods in scenario.traffic.items():
        lines.append(f"[{phase}] S3 bytes per pod: " + ", ".join(
            f"{pod} read {t.bytes_read(scenario.sizes)} / wrote {t.bytes_written()}" for pod, t in pods.items()))
    lines.append(f"resumed_from_step: {scenario.resumed_from_step} (killed after step-{scenario.killed_after_step})")
    for run, curve in scenario.losses.items():
        lines.append(f"loss {run}: {[round(loss, 5) for _, loss in curve]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.e2e.pod_checks [--work DIR]`: the scenario against the zhllama on sys.path, checks reported
    (exit 1 if one fails) instead of asserted. PYTHONPATH=/other/checkout/pkg measures another checkout."""
    import argparse
    import tempfile

    from tests.train.tiny import build_tiny_set

    parser = argparse.ArgumentParser(prog="python -m tests.e2e.pod_checks", description=main.__doc__)
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--kill-after-step", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="zhllama-pods-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"code: {code_root()}  work: {work}", flush=True)
    tiny = build_tiny_set(work / "tiny")
    cluster = PodCluster(work / "cluster")
    try:
        scenario = fault_scenario(cluster, tiny, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
                                  kill_after_step=args.kill_after_step)
    finally:
        cluster.close()
    print(report(scenario))
    checks = scenario_checks(scenario)
    for check in checks:
        print(f"{'PASS' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
