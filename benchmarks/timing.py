"""Timing statistics of the benchmark: noise-robust medians of step times on a shared machine.

A contender is a function run(n) that runs n steps and blocks until they are done. Two
schedules time them:

  time_in_rotation  each contender once per repeat, in an order that rotates every repeat,
                    each timed run preceded by one untimed step;
  time_abba_pairs   single steps of two contenders alternated ABBA, for a paired comparison
                    (median_pair_overhead, with median_interval's distribution-free interval).

rates_in_rotation does the same for contenders that measure a rate themselves (the input
benchmark's fresh iterators); pinned runs code with the whole process on given cores.

read_cpu_jiffies / steal_fraction measure how much of the machine the hypervisor gave to
others while they ran. Standard library only: importing this starts no JAX.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from typing import Callable, NamedTuple


class Timings(NamedTuple):
  median: dict  # name -> median over repeats (or pairs) of wall seconds per step
  wall: dict  # name -> every repeat's (or pair's) wall seconds per step
  cpu: dict  # name -> every repeat's (or pair's) process CPU seconds (all threads)


def time_in_rotation(
    contenders: dict[str, Callable[[int], None]], *, steps: int, repeats: int
) -> Timings:
  """Runs each contender once per repeat for `steps` steps, each timed run preceded by one
  untimed step: whoever runs right after another contender pays for its threads and the
  memory it freed (up to 30% of a step right after PyTorch), and that settles in the untimed
  step. The order rotates every repeat, so that no contender always follows the same one.

  Records wall time and the process's CPU time: on a CPU device the latter is the work done,
  immune to the hypervisor's steal that makes single wall-clock steps vary by +-15% on a
  shared VM.
  """
  names = list(contenders)
  wall = {name: [] for name in names}
  cpu = {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      run = contenders[name]
      run(1)  # untimed: the previous contender's threads and freed memory settle here
      t0, c0 = time.perf_counter(), time.process_time()
      run(steps)
      wall[name].append((time.perf_counter() - t0) / steps)
      cpu[name].append((time.process_time() - c0) / steps)
  return Timings({name: statistics.median(ts) for name, ts in wall.items()}, wall, cpu)


def time_abba_pairs(
    a: str, b: str, contenders: dict[str, Callable[[int], None]], *, pairs: int
) -> Timings:
  """Single steps of contenders a and b alternated ABBA (a b, b a, a b, ...), after one
  untimed step of each: entry i of each list is pair i, two steps run back to back.

  On a shared VM single steps vary by +-10% from one to the next: pairing cancels the slow
  drift, and the median over many pairs the heavy tail of slow steps, which would land
  whole in a mean over a few steps.
  """
  wall, cpu = {a: [], b: []}, {a: [], b: []}
  contenders[a](1)
  contenders[b](1)
  for i in range(pairs):
    for name in ((a, b) if i % 2 == 0 else (b, a)):
      t0, c0 = time.perf_counter(), time.process_time()
      contenders[name](1)
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  return Timings({name: statistics.median(ts) for name, ts in wall.items()}, wall, cpu)


def rates_in_rotation(
    contenders: dict[str, Callable[[], float]], *, repeats: int
) -> tuple[dict, dict]:
  """Calls each contender (which measures and returns a rate) once per repeat, in an order
  that rotates every repeat. Returns (name -> median rate, name -> every repeat's rate)."""
  names = list(contenders)
  rates = {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      rates[name].append(contenders[name]())
  return {name: statistics.median(rs) for name, rs in rates.items()}, rates


def _set_every_thread(cpus) -> None:
  # os.sched_setaffinity(0, ...) moves only the calling thread: the threads that already
  # exist (TensorFlow's pools, XLA's) would stay on every core. Loop until no new thread
  # appeared, since a thread not yet moved may start one with the old mask.
  done = set()
  while True:
    tids = set(os.listdir("/proc/self/task")) - done
    if not tids:
      return
    for tid in tids:
      try:
        os.sched_setaffinity(int(tid), cpus)
      except (ProcessLookupError, OSError):  # exited meanwhile
        pass
    done |= tids


@contextlib.contextmanager
def pinned(cpus):
  """The whole process (every thread, and those they start) on `cpus` inside the block;
  every thread back on the process's former cores afterwards. cpus=None: no change."""
  if cpus is None:
    yield
    return
  before = os.sched_getaffinity(0)
  _set_every_thread(set(cpus))
  try:
    yield
  finally:
    _set_every_thread(before)


def pair_ratios(with_extra: list, without: list) -> list:
  """(with - without) / without for each pair: the relative cost of the extra work."""
  return [(a - n) / n for a, n in zip(with_extra, without)]


def median_pair_overhead(with_extra: list, without: list) -> float:
  """Median over pairs of (with - without) / without, each pair timed back to back.

  The machine's drift (over seconds) cancels within a pair; a ratio of the two medians keeps
  it, since the two medians come from steps that ran at different times.
  """
  return statistics.median(pair_ratios(with_extra, without))


def median_interval(values: list, level: float = 0.9) -> tuple[float, float] | None:
  """Distribution-free confidence interval for the median: the order statistics
  (x_(k), x_(n+1-k)) with the largest k whose binomial tail P(Bin(n, 1/2) < k) is at most
  (1 - level) / 2. Assumes nothing about the shape of the step-time noise (heavy-tailed
  on a shared VM). None when n is too small for any such k (n < 5 at 90%)."""
  n, tail, k = len(values), (1.0 - level) / 2, 0
  cdf = 0.0  # P(Bin(n, 1/2) < k + 1), growing with k
  while k < n // 2:
    cdf += math.comb(n, k) / 2**n
    if cdf > tail:
      break
    k += 1
  if k == 0:
    return None
  xs = sorted(values)
  return xs[k - 1], xs[n - k]


def read_cpu_jiffies(path: str = "/proc/stat") -> tuple[int, int] | None:
  """(steal, total) jiffies of all CPUs since boot from Linux's /proc/stat; None elsewhere.

  steal is the time the hypervisor ran someone else while this VM had work: the noise a
  wall-clock benchmark on a shared VM cannot control, so the benchmark reports its share.
  """
  try:
    with open(path) as f:
      fields = f.readline().split()
  except OSError:
    return None
  if not fields or fields[0] != "cpu" or len(fields) < 9:
    return None
  # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
  ticks = [int(x) for x in fields[1:9]]
  return ticks[7], sum(ticks)


def steal_fraction(before, after) -> float | None:
  """Share of CPU time stolen by the hypervisor between two read_cpu_jiffies() readings."""
  if before is None or after is None or after[1] <= before[1]:
    return None
  return (after[0] - before[0]) / (after[1] - before[1])
