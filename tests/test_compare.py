"""python -m alexnet_jax.compare on two run directories written by hand, against values
worked out by hand from the rows below."""

import csv
import json
import os
import sys

import pytest
from PIL import Image

from alexnet_jax import compare
from tests import forkserver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG_A = {
    "seed": 0,
    "batch_size": 8,
    "eval_crops": 1,
    "model": {"lrn": True, "width": 0.25},
    "optimizer": {"learning_rate": 0.01, "momentum": 0.9},
}
# B: another learning rate, no LRN, and a key A lacks.
CONFIG_B = {
    "seed": 0,
    "batch_size": 8,
    "eval_crops": 1,
    "model": {"lrn": False, "width": 0.25},
    "optimizer": {"learning_rate": 0.02, "momentum": 0.9},
    "init_from": "runs/x",
}


def _train(step, loss, ips):
  return {
      "step": step,
      "split": "train",
      "loss": loss,
      "learning_rate": 0.01,
      "images_per_sec": ips,
  }


def _eval(step, top1, top5, num_images=64.0):
  return {
      "step": step,
      "split": "eval",
      "top1_error": top1,
      "top5_error": top5,
      "num_images": num_images,
  }


# A was resumed from its step-10 checkpoint: steps 20 were logged twice, the second wins.
ROWS_A = [
    _train(10, 2.0, 40.0),
    _eval(10, 0.6, 0.2),
    _train(20, 1.5, 80.0),
    _eval(20, 0.4, 0.25),
    _train(20, 1.4, 100.0),
    _eval(20, 0.45, 0.1),
    _train(30, 1.0, 60.0),
    _eval(30, 0.5, 0.15),
]
# B evaluated on a prefix of 32 images at its last step (max_eval_batches).
ROWS_B = [
    _train(10, 2.2, 50.0),
    _eval(10, 0.7, 0.3),
    _train(20, 1.8, 70.0),
    _eval(20, 0.55, 0.35, 32.0),
]

# By hand. A's rows after the resume: train (10, 40 img/s), (20, 100), (30, 60); eval top-1
# 0.6, 0.45, 0.5 and top-5 0.2, 0.1, 0.15.
EXPECTED = {
    "a": {
        "init_from": None,
        "model.lrn": True,
        "optimizer.learning_rate": 0.01,
        "last step": 30,
        "train time (s)": 10 * 8 / 40 + 10 * 8 / 100 + 10 * 8 / 60,
        "images/s": (40 + 100 + 60) / 3,
        "top-1 final": 0.5,
        "top-1 best": 0.45,
        "top-5 final": 0.15,
        "top-5 best": 0.1,
        "top-1 1-view": 0.47,
        "top-5 1-view": 0.11,
        "top-1 10-view": 0.42,
        "top-5 10-view": 0.12,
    },
    "b": {
        "init_from": "runs/x",
        "model.lrn": False,
        "optimizer.learning_rate": 0.02,
        "last step": 20,
        "train time (s)": 10 * 8 / 50 + 10 * 8 / 70,
        "images/s": (50 + 70) / 2,
        "top-1 final": 0.55,
        "top-1 best": 0.55,
        "top-5 final": 0.35,
        "top-5 best": 0.3,
        "top-1 1-view": None,
        "top-5 1-view": None,
        "top-1 10-view": None,
        "top-5 10-view": None,
    },
}
NUMBERS = [k for k in EXPECTED["a"] if k not in ("init_from", "model.lrn")]


def _write_run(path, config, rows, tail=""):
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config, indent=2))
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


@pytest.fixture
def runs(tmp_path):
  root = tmp_path / "runs"
  _write_run(root / "a", CONFIG_A, ROWS_A)
  # evaluate's files: 10 views at the last step; 1 view only at an earlier step.
  (root / "a" / "eval_30_10crop.json").write_text(
      json.dumps({"step": 30, "crops": 10, "top1_error": 0.42, "top5_error": 0.12})
  )
  (root / "a" / "eval_20_1crop.json").write_text(
      json.dumps({"step": 20, "crops": 1, "top1_error": 0.47, "top5_error": 0.11})
  )
  # B was killed while writing a row: half a line at the end.
  _write_run(root / "b", CONFIG_B, ROWS_B, tail='{"step": 30, "spl')
  (root / "notes.txt").write_text("not a run")  # a file a glob matches: passed over
  (root / "scratch").mkdir()  # a directory without config.json: named, then passed over
  return root


def _check_rows(rows):
  by_run = {r["run"]: r for r in rows}
  assert sorted(by_run) == ["a", "b"]
  for name, expected in EXPECTED.items():
    for key, value in expected.items():
      got = by_run[name][key]
      if isinstance(value, float):
        assert got == pytest.approx(value, rel=1e-12), (name, key)
      else:
        assert got == value, (name, key)


def test_table_against_hand_computed_values(runs):
  c = compare.compare([compare.read_run(str(runs / "a")), compare.read_run(str(runs / "b"))])
  # Only the keys that differ (seed, batch_size, momentum, width are shared), sorted.
  assert c.columns[:4] == ["run", "init_from", "model.lrn", "optimizer.learning_rate"]
  assert c.columns[4:] == [
      "last step",
      "train time (s)",
      "images/s",
      "top-1 final",
      "top-1 best",
      "top-5 final",
      "top-5 best",
      "top-1 1-view",
      "top-5 1-view",
      "top-1 10-view",
      "top-5 10-view",
  ]
  _check_rows(c.rows)
  assert "a: its 1-view errors are of step 20, not of its last step 30" in c.notes
  assert f"b: 1 unreadable line(s) of {compare.METRICS_FILE} skipped" in c.notes
  assert any(n.startswith("~: an estimate") and n.endswith(": a, b") for n in c.notes)
  for r in c.rows:
    assert isinstance(r["train time (s)"], compare.Estimate)
    assert isinstance(r["images/s"], compare.Estimate)
  assert (
      "training's evaluations saw different numbers of validation images (max_eval_batches): "
      "a 64, b 32"
  ) in c.notes


def _clocked(step, ips, window_s, elapsed_s, warmup=False):
  return {**_train(step, 1.0, ips), "window_s": window_s, "elapsed_s": elapsed_s, "warmup": warmup}


def test_clocked_runs_take_time_and_rate_from_the_recorded_clock(tmp_path):
  """A run launched twice (killed after its step-20 checkpoint, resumed): each launch's time
  is its last row's elapsed_s; the rate leaves out each launch's warm-up window."""
  rows = [
      _clocked(10, 8.0, 10.0, 12.0, warmup=True),  # 80 images in 10 s, 2 s of setup before
      _clocked(20, 40.0, 2.0, 14.5),  # 80 images in 2 s
      {**_eval(20, 0.5, 0.2), "elapsed_s": 16.0, "eval_s": 1.5},
      _clocked(30, 10.0, 8.0, 9.0, warmup=True),  # the second launch: compiles again
      _clocked(40, 20.0, 4.0, 13.5),  # 80 images in 4 s
      {**_eval(40, 0.4, 0.1), "elapsed_s": 15.0, "eval_s": 1.0},
  ]
  _write_run(tmp_path / "r", CONFIG_A, rows)
  warm = [_clocked(10, 4.0, 20.0, 21.0, warmup=True)]  # one window: compilation included
  _write_run(tmp_path / "w", CONFIG_A, warm)
  c = compare.compare([compare.read_run(str(tmp_path / n)) for n in ("r", "w")])
  r, w = c.rows
  assert r["train time (s)"] == pytest.approx(16.0 + 15.0)
  assert r["images/s"] == pytest.approx((80 + 80) / (2.0 + 4.0))
  assert w["train time (s)"] == pytest.approx(21.0) and w["images/s"] == pytest.approx(4.0)
  for row in c.rows:
    assert not isinstance(row["train time (s)"], compare.Estimate)
    assert not isinstance(row["images/s"], compare.Estimate)
  assert not any(n.startswith("~") for n in c.notes)
  assert "images/s includes compilation (only a warm-up window was logged): w" in c.notes
  assert compare.text_table(c).splitlines()[2].split()[1:4] == ["40", "31", "26.7"]


def test_files_csv_markdown_and_the_curves(runs, tmp_path):
  c = compare.compare([compare.read_run(str(runs / n)) for n in ("a", "b")])
  out = tmp_path / "out"
  paths = compare.write(c, str(out))
  assert paths == [str(out / n) for n in compare.OUTPUT_FILES]

  with open(out / "comparison.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == c.columns
  parsed = []
  for row in table:
    r = {"run": row["run"], "init_from": row["init_from"] or None}
    r["model.lrn"] = json.loads(row["model.lrn"])
    r.update({k: float(row[k]) if row[k] else None for k in NUMBERS})
    parsed.append(r)
  _check_rows(parsed)

  md = (out / "comparison.md").read_text().splitlines()
  header = "| " + " | ".join(c.columns) + " |"
  table_rows = md[md.index(header) + 2 :]
  assert [r.split(" | ")[0] for r in table_rows] == ["| a", "| b"]
  # Logged without clock times: the time figures are estimates, marked ~.
  assert table_rows[1].startswith("| b | runs/x | false | 0.02 | 20 | ~3 | ~60.0 | 0.5500 |")

  # Two lines per panel, one per run, carrying the runs' own numbers and the same colour.
  fig = compare.plot(c)
  loss_ax, err_ax = fig.axes
  for ax in (loss_ax, err_ax):
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
  assert list(loss_ax.get_lines()[0].get_xdata()) == [10, 20, 30]
  assert list(loss_ax.get_lines()[0].get_ydata()) == [2.0, 1.4, 1.0]
  assert list(err_ax.get_lines()[1].get_ydata()) == [0.7, 0.55]
  assert [line.get_color() for line in loss_ax.get_lines()] == [
      line.get_color() for line in err_ax.get_lines()
  ]
  with Image.open(out / "comparison.png") as png:
    assert png.format == "PNG" and png.size == (1200, 450)


def test_an_unreadable_config_is_named(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": ')
  with pytest.raises(
      compare.NotARunError, match=r"config.json is not valid JSON \(Expecting value"
  ):
    compare.read_run(str(tmp_path))


def test_glob_expansion(runs):
  pattern = str(runs / "*")
  assert compare.expand([pattern]) == [str(runs / "a"), str(runs / "b"), str(runs / "scratch")]
  assert compare.expand([str(runs / "a"), str(runs / "[ab]")]) == [
      str(runs / "a"),
      str(runs / "b"),
  ]
  assert compare.expand([str(runs / "z*")]) == [str(runs / "z*")]  # named when read


def test_a_patterns_runs_come_in_the_order_they_were_created(tmp_path):
  """A sweep's points are created in its order (baseline first) whatever their names sort
  to; config_history.jsonl's first line (written at a run's first launch) says when."""
  root = tmp_path / "sweep"
  created = {
      "default": "2026-01-02T10:00:00+00:00",
      "model.lrn=False": "2026-01-02T10:01:30+00:00",
      "augment.lighting_std=0.0": "2026-01-02T10:03:00+00:00",
  }
  for name, when in reversed(created.items()):  # written in the opposite order
    _write_run(root / name, CONFIG_A, ROWS_A)
    lines = [{"time": when, "event": "created"}, {"time": "2026-02-01T00:00:00+00:00"}]
    (root / name / "config_history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  _write_run(root / "converted", CONFIG_B, ROWS_B)  # no history: config.json's time, newest
  (root / "scratch").mkdir()  # no run: last
  want = [str(root / n) for n in [*created, "converted", "scratch"]]
  assert compare.expand([str(root / "*")]) == want
  # Named one by one, the runs keep the command line's order.
  assert compare.expand([want[2], want[0]]) == [want[2], want[0]]
  assert compare.expand([want[1], str(root / "*")]) == [want[1], want[0], *want[2:]]


def test_the_legend_covers_no_point(runs):
  c = compare.compare([compare.read_run(str(runs / n)) for n in ("a", "b")])
  fig = compare.plot(c)
  fig.canvas.draw()  # Agg: the legend's and the panels' places in pixels
  (legend,) = fig.legends
  assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]
  box = legend.get_window_extent()
  for ax in fig.axes:
    assert not box.overlaps(ax.get_window_extent()), (box, ax.get_window_extent())


def _compare(*args, cwd=REPO):
  env = {**os.environ, "PYTHONPATH": REPO}
  # A forked child of a zygote that preloaded the libraries (tests/forkserver.py).
  return forkserver.run(
      [sys.executable, "-m", "alexnet_jax.compare", *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )


def test_command_on_a_glob_writes_into_the_runs_parent(runs):
  r = _compare(str(runs / "*"))  # quoted: the program expands it
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("run "))
  assert lines[header].split()[:4] == ["run", "init_from", "model.lrn", "optimizer.learning_rate"]
  # Rows written without clock times: estimated time figures (~).
  assert lines[header + 2].split()[:8] == ["a", "-", "true", "0.01", "30", "~4", "~66.7", "0.5000"]
  assert lines[header + 3].split()[:8] == [
      "b",
      "runs/x",
      "false",
      "0.02",
      "20",
      "~3",
      "~60.0",
      "0.5500",
  ]
  # The directory without config.json: one line naming it and what a run directory holds.
  assert f"{runs / 'scratch'} is not a run directory (a run directory holds config.json" in r.stderr
  assert "notes.txt" not in r.stderr
  assert sorted(os.listdir(runs)) == sorted(
      ["a", "b", "notes.txt", "scratch", *compare.OUTPUT_FILES]
  )


def test_sweep_root_given_as_a_run_points_to_its_runs(runs, tmp_path):
  r = _compare(str(runs), f"--out={tmp_path / 'o'}")
  assert r.returncode == 1
  assert f"{runs} is not a run directory" in r.stderr
  assert f"it holds runs: pass '{runs / '*'}'" in r.stderr
  assert "FATAL: none of" in r.stderr and not (tmp_path / "o").exists()


def test_bare_command_prints_usage_and_exits_2():
  r = _compare()
  assert r.returncode == 2
  assert r.stderr.startswith("usage: python -m alexnet_jax.compare RUN_DIR [RUN_DIR...]")
  assert "python -m alexnet_jax.compare 'runs/ablations/*' --out=runs/ablations" in r.stderr
  # One hint to --help, the one every command gives.
  assert r.stderr.count("--help") == 1 and r.stderr.endswith("\n--help lists every flag.\n")
  no_run = _compare("--out=x")  # flags but no run: as a bare run
  assert no_run.returncode == 2 and no_run.stderr == r.stderr
  bad = _compare("--outt=x", "runs/a")
  assert bad.returncode == 2 and "usage:" in bad.stderr


def test_help_exits_0():
  r = _compare("--help")
  assert r.returncode == 0, r.stderr
  assert "A table and the learning curves of several runs" in r.stdout
  assert "--out: Where to write the comparison" in r.stdout


def test_a_local_sweep_ends_with_the_comparison(tmp_path):
  # A stand-in for alexnet_jax.main: writes the config.json and metrics.jsonl of a 10-step
  # run, its numbers depending on the seed so that each point's row is its own.
  fake = tmp_path / "fake_main.py"
  fake.write_text(
      f"#!{sys.executable}\n"
      "import json, os, sys\n"
      "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
      "workdir, seed = args['workdir'], int(args['config.seed'])\n"
      "os.makedirs(workdir)\n"
      "json.dump({'seed': seed, 'batch_size': 4}, open(os.path.join(workdir, 'config.json'), 'w'))\n"
      "rows = [{'step': 10, 'split': 'train', 'loss': 1.0 + seed, 'images_per_sec': 8.0},\n"
      "        {'step': 10, 'split': 'eval', 'top1_error': 0.1 * (seed + 1), 'top5_error': 0.0}]\n"
      "open(os.path.join(workdir, 'metrics.jsonl'), 'w').writelines(json.dumps(r) + '\\n' for r in rows)\n"
  )
  fake.chmod(0o755)
  root = tmp_path / "sweep"
  r = forkserver.run(
      [
          sys.executable,
          os.path.join(REPO, "launch", "sweep.py"),
          "--config=configs/demo.py",
          f"--workdir={root}",
          "--grid",
          "seed=0,1",
          "--mode=local",
          f"--launcher={fake}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert r.returncode == 0, r.stdout + r.stderr
  assert "2 of 2 runs succeeded" in r.stdout
  with open(root / "comparison.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [
      (x["run"], x["seed"], x["last step"], x["train time (s)"], x["top-1 final"]) for x in rows
  ] == [
      ("seed=0", "0", "10", "5.0", "0.1"),
      ("seed=1", "1", "10", "5.0", "0.2"),
  ]
  assert (root / "comparison.png").exists() and (root / "comparison.md").exists()
