#!/usr/bin/env python3
"""Expand a grid of absl config overrides into one run per point, each in its own workdir.

usage: launch/sweep.py --config=CONFIG --workdir=ROOT [--grid KEY=V1,V2,...]...
                       [--mode=print|local|slurm] [--launcher=CMD] [-- MAIN_FLAGS...]

  launch/sweep.py --config=configs/demo.py --workdir=runs/sweep \\
      --grid optimizer.learning_rate=0.01,0.02 --grid model.width=0.25,0.5 --mode=local

The points are the cross product of the --grid axes (in the order given), crossed with the
points of the config's `sweep()` function when it has one:

  def sweep():                        # in a configs/*.py next to get_config()
    return {"optimizer.learning_rate": [0.01, 0.02], "seed": [0, 1]}   # a grid, or
    # return [{"optimizer.learning_rate": 0.01}, {"model.lrn": False}]  # explicit points

Each point becomes `python -m alexnet_jax.main --config=CONFIG --workdir=ROOT/NAME
--config.KEY=VALUE ... MAIN_FLAGS`, NAME being its overrides (`optimizer.learning_rate=0.02,
model.width=0.5`). With --launcher the command starts with it instead of `python -m
alexnet_jax.main` (e.g. --launcher="launch/local_devices.sh 4", or
--launcher="launch/multiprocess_local.sh 2 2").

Modes:
  print  the commands, one per line (shell-quoted);
  local  run them one after another here (a failed run does not stop the others; the exit
         status is 1 if any failed). Re-running resumes each from its checkpoint. Then
         `python -m alexnet_jax.compare` writes their table and learning curves to
         ROOT/comparison.{csv,md,png};
  slurm  write a SLURM array job (--slurm_script, default ROOT/sweep.sbatch) with one array
         task per point (`srun` + the command; --sbatch adds #SBATCH lines) and print
         `sbatch PATH`. SWEEP_DRY_RUN=1 SLURM_ARRAY_TASK_ID=i bash PATH prints point i's
         command, one argument per line, without running it.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_values(text: str) -> list[str]:
  """'a,b,(1, 2),[3,4]' -> ['a', 'b', '(1, 2)', '[3,4]']: commas inside brackets or quotes
  do not split."""
  out, depth, quote, cur = [], 0, None, []
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append("".join(cur).strip())
      cur = []
      continue
    cur.append(ch)
  out.append("".join(cur).strip())
  return [v for v in out if v != ""]


def normalize_key(key: str) -> str:
  """'--config.model.width' / 'config.model.width' / 'model.width' -> 'model.width'."""
  key = key.strip().lstrip("-")
  return key[len("config.") :] if key.startswith("config.") else key


def format_value(value: Any) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value) if isinstance(value, float) else str(value)


def parse_grid(specs: Sequence[str]) -> list[dict[str, str]]:
  """['a=1,2', 'b=x,y'] -> [{a:1,b:x}, {a:1,b:y}, {a:2,b:x}, {a:2,b:y}]."""
  axes = []
  for spec in specs:
    if "=" not in spec:
      raise ValueError(f"--grid wants KEY=V1,V2,...; got {spec!r}")
    key, values = spec.split("=", 1)
    values = split_values(values)
    if not values:
      raise ValueError(f"--grid {spec!r} has no values")
    axes.append([(normalize_key(key), v) for v in values])
  return [dict(p) for p in itertools.product(*axes)]


def config_points(config_path: str) -> list[dict[str, str]] | None:
  """The points of the config file's `sweep()`, or None when it has none."""
  path = config_path.split(":", 1)[0]
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"cannot load config {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  fn = getattr(module, "sweep", None)
  if fn is None:
    return None
  result = fn()
  if isinstance(result, dict):
    axes = [[(normalize_key(k), format_value(v)) for v in vs] for k, vs in result.items()]
    return [dict(p) for p in itertools.product(*axes)]
  return [{normalize_key(k): format_value(v) for k, v in point.items()} for point in result]


def combine(a: list[dict] | None, b: list[dict] | None) -> list[dict]:
  if not a:
    return b or [{}]
  if not b:
    return a
  return [{**x, **y} for x in a for y in b]


def run_name(point: dict[str, str]) -> str:
  """The workdir name of a point: its overrides, filesystem-safe."""
  if not point:
    return "default"
  name = ",".join(f"{k}={v}" for k, v in point.items())
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def commands(
    config: str,
    root: str,
    points: list[dict[str, str]],
    *,
    python: str = "python3",
    launcher: str | None = None,
    extra: Sequence[str] = (),
) -> list[list[str]]:
  names = [run_name(p) for p in points]
  dupes = {n for n in names if names.count(n) > 1}
  if dupes:
    raise ValueError(f"several points share a workdir name: {sorted(dupes)}")
  base = shlex.split(launcher) if launcher else [python, "-m", "alexnet_jax.main"]
  return [
      [
          *base,
          f"--config={config}",
          f"--workdir={os.path.join(root, name)}",
          *(f"--config.{k}={v}" for k, v in point.items()),
          *extra,
      ]
      for name, point in zip(names, points)
  ]


def slurm_script(
    cmds: list[list[str]],
    points: list[dict[str, str]],
    *,
    job_name: str,
    log_dir: str,
    sbatch: Sequence[str] = (),
    srun: bool = True,
    workdir: str | None = None,
) -> str:
  """A SLURM array job: task i runs cmds[i] (under srun)."""
  lines = [
      "#!/usr/bin/env bash",
      f"#SBATCH --job-name={job_name}",
      f"#SBATCH --array=0-{len(cmds) - 1}",
      f"#SBATCH --output={os.path.join(log_dir, 'slurm-%A_%a.out')}",
  ]
  lines += [f"#SBATCH {s if s.startswith('-') else '--' + s}" for s in sbatch]
  lines += ["# Generated by launch/sweep.py: one array task per grid point.", "#"]
  lines += [f"#   {i}: {run_name(p)}" for i, p in enumerate(points)]
  lines += [
      "set -euo pipefail",
      f"cd {shlex.quote(workdir or os.getcwd())}",
      f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}",
      'case "${SLURM_ARRAY_TASK_ID:?submit with sbatch (or set SLURM_ARRAY_TASK_ID)}" in',
  ]
  for i, cmd in enumerate(cmds):
    lines.append(f"  {i}) CMD=({shlex.join(cmd)}) ;;")
  lines += [
      '  *) echo "no grid point $SLURM_ARRAY_TASK_ID (0-'
      + str(len(cmds) - 1)
      + ')" >&2; exit 2 ;;',
      "esac",
      'if [[ "${SWEEP_DRY_RUN:-0}" == 1 ]]; then printf "%s\\n" "${CMD[@]}"; exit 0; fi',
      ('exec srun "${CMD[@]}"' if srun else 'exec "${CMD[@]}"'),
      "",
  ]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1 :]
  p = argparse.ArgumentParser(
      prog="launch/sweep.py",
      description=__doc__.split("\n")[0],
      usage="launch/sweep.py --config=CONFIG --workdir=ROOT [--grid KEY=V1,V2,...]... "
      "[--mode=print|local|slurm] [--launcher=CMD] [-- MAIN_FLAGS...]",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      # The docstring after its first line (the description) and its usage line.
      epilog=__doc__.split("\n\n", 2)[2],
  )
  p.add_argument("--config", required=True, help="the config file, as for alexnet_jax.main")
  p.add_argument("--workdir", required=True, help="root; each run gets ROOT/NAME")
  p.add_argument(
      "--grid",
      action="append",
      default=[],
      metavar="KEY=V1,V2,...",
      help="one axis of the grid (repeat for more axes)",
  )
  p.add_argument(
      "--mode",
      choices=("print", "local", "slurm"),
      default="print",
      help="print the commands (default), run them here one after another (then compare "
      "them), or write and submit a SLURM array job",
  )
  p.add_argument(
      "--python",
      default=sys.executable or "python3",
      help="interpreter in the commands (default: this one)",
  )
  p.add_argument(
      "--launcher", default=None, help="command prefix replacing `python -m alexnet_jax.main`"
  )
  p.add_argument(
      "--no_config_sweep", action="store_true", help="ignore the config's sweep() function"
  )
  p.add_argument("--slurm_script", default=None, help="slurm mode: where to write the job")
  p.add_argument(
      "--sbatch",
      action="append",
      default=[],
      metavar="OPTION",
      help="slurm mode: an #SBATCH option, e.g. --sbatch=--gpus-per-node=8",
  )
  p.add_argument("--no_srun", action="store_true", help="slurm mode: run without srun")
  p.add_argument("--job_name", default="alexnet-sweep")
  args = p.parse_args(argv)

  try:
    grid = parse_grid(args.grid)
    from_config = None if args.no_config_sweep else config_points(args.config)
    points = combine(from_config, grid if args.grid else None)
    cmds = commands(
        args.config, args.workdir, points, python=args.python, launcher=args.launcher, extra=extra
    )
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))

  if args.mode == "print":
    for cmd in cmds:
      print(shlex.join(cmd))
    return 0
  if args.mode == "slurm":
    path = args.slurm_script or os.path.join(args.workdir, "sweep.sbatch")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(
          slurm_script(
              cmds,
              points,
              job_name=args.job_name,
              log_dir=os.path.abspath(args.workdir),
              sbatch=args.sbatch,
              srun=not args.no_srun,
          )
      )
    os.chmod(path, 0o755)
    print(f"{len(cmds)} runs; submit with:  sbatch {shlex.quote(path)}")
    return 0
  failed = []
  for i, cmd in enumerate(cmds):
    print(f"[sweep {i + 1}/{len(cmds)}] {shlex.join(cmd)}", flush=True)
    rc = subprocess.call(cmd)
    if rc:
      print(f"[sweep {i + 1}/{len(cmds)}] exit status {rc}", flush=True)
      failed.append((run_name(points[i]), rc))
  print(
      f"[sweep] {len(cmds) - len(failed)} of {len(cmds)} runs succeeded"
      + (f"; failed: {failed}" if failed else ""),
      flush=True,
  )
  if len(failed) < len(cmds):
    # The runs side by side, failed ones with what they logged; the exit status stays the
    # runs'. PYTHONPATH: alexnet_jax from this checkout, as the SLURM script sets it.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    }
    workdirs = [os.path.join(args.workdir, run_name(p)) for p in points]
    subprocess.call(
        [args.python, "-m", "alexnet_jax.compare", *workdirs, f"--out={args.workdir}"], env=env
    )
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
