"""InputSpec: what the network is fed, built from each kind of config.input, against the
normalisation written out in NumPy; preprocessing.json; old run directories."""

import json
import types

import numpy as np
import pytest

from alexnet_jax import config_schema, input_spec, run_dir
from alexnet_jax.input_spec import InputSpec
from configs import caffe, torchvision
from tests import tiny

RS = np.random.RandomState(0)
IMAGES = RS.randint(0, 256, (2, 256, 256, 3)).astype(np.uint8)
MEAN_IMAGE = (RS.rand(256, 256, 3) * 255).astype(np.float32)
STATS = types.SimpleNamespace(mean_image=MEAN_IMAGE)


def _fed(spec):
  """What the spec turns IMAGES into: normalised whole images, in the network's order."""
  return np.asarray(spec.to_channel_order(spec.normalize(IMAGES)))


def test_dataset_mean_is_the_training_mean_image_times_scale():
  config = tiny.config()  # demo: the dataset's mean image, x 1/128
  spec = InputSpec.from_config(config, STATS)
  assert (spec.mean_kind, spec.std, spec.channel_order) == ("dataset", None, "rgb")
  assert (spec.scale, spec.crop_size, spec.resize) == (1 / 128, 224, "round")
  np.testing.assert_allclose(_fed(spec), (IMAGES - MEAN_IMAGE.astype(np.float64)) / 128, atol=1e-5)
  with pytest.raises(ValueError, match="input.mean='dataset'.*statistics"):
    InputSpec.from_config(config)


def test_torchvision_pixel_mean_and_std():
  config = torchvision.get_config()
  spec = InputSpec.from_config(config)
  mean = 255.0 * np.array([0.485, 0.456, 0.406])
  std = 255.0 * np.array([0.229, 0.224, 0.225])
  assert (spec.mean_kind, spec.resize, spec.crop_size) == ("pixel", "torchvision", 224)
  np.testing.assert_allclose(_fed(spec), (IMAGES - mean) / std, atol=1e-5)
  # torchvision's Normalize on [0, 1] pixels is the same number.
  np.testing.assert_allclose(_fed(spec), (IMAGES / 255.0 - mean / 255) / (std / 255), atol=1e-5)


def test_caffe_run_mean_image_bgr_at_227(tmp_path):
  config = caffe.get_config()
  config.input.mean = "run"
  with pytest.raises(FileNotFoundError, match="mean_image.npy not found"):
    run_dir.input_spec_from_config(str(tmp_path), config)
  with pytest.raises(ValueError, match="input.mean='run' needs the run's mean image"):
    InputSpec.from_config(config)
  run_dir.write_mean_image(str(tmp_path), MEAN_IMAGE)
  spec = run_dir.input_spec_from_config(str(tmp_path), config)
  assert (spec.mean_kind, spec.channel_order, spec.crop_size, spec.resize) == (
      "run",
      "bgr",
      227,
      "warp",
  )
  want = (IMAGES - MEAN_IMAGE.astype(np.float64))[..., ::-1]
  np.testing.assert_allclose(_fed(spec), want, atol=1e-5)


def test_impossible_values_are_refused():
  config = tiny.config(**{"input.std_rgb": (1.0, 2.0)})
  with pytest.raises(ValueError, match=r"std_rgb must be \(\) or 3 positive numbers"):
    InputSpec.from_config(config, STATS)
  with pytest.raises(ValueError, match="input.mean must be one of"):
    InputSpec.from_config(tiny.config(**{"input.mean": "image"}), STATS)
  with pytest.raises(ValueError, match="a mean must be"):
    InputSpec.create(np.zeros((224, 224, 3)))


@pytest.mark.parametrize("preset", ["demo", "torchvision", "caffe_run"])
def test_preprocessing_json_round_trip(tmp_path, preset):
  workdir = str(tmp_path)
  if preset == "demo":
    config = tiny.config()
  elif preset == "torchvision":
    config = torchvision.get_config()
  else:
    config = caffe.get_config()
    config.input.mean = "run"
    run_dir.write_mean_image(workdir, MEAN_IMAGE)
  spec = run_dir.input_spec_from_config(workdir, config, STATS)
  # The converters write it from the config alone: the same file.
  assert input_spec.json_of_config(config) == spec.to_json()
  assert tuple(spec.to_json()) == input_spec.JSON_KEYS
  run_dir.write_preprocessing(workdir, spec.to_json(), "somewhere", eval_crops=10)
  saved = run_dir.read_preprocessing(workdir)
  assert saved["dataset"] == "somewhere" and saved["eval_crops"] == 10
  assert "mean_image" not in json.dumps(saved) and len(json.dumps(saved)) < 1000
  # Read back without the config: only the file and the mean image beside it.
  back = run_dir.read_input_spec(workdir, None, STATS)
  assert back.to_json() == spec.to_json()
  np.testing.assert_array_equal(back.mean, spec.mean)
  np.testing.assert_array_equal(_fed(back), _fed(spec))


def test_an_old_run_directory_reads_the_same_spec(tmp_path):
  """config.json with the input under augment/model, and a preprocessing.json of
  image_size/crop_size/scale/eval_crops only, as written by hand."""
  old = {
      "dataset": {"name": "digits"},
      "augment": {
          "mean": "pixel",
          "mean_rgb": [10.0, 20.0, 30.0],
          "std_rgb": [2.0, 4.0, 8.0],
          "channel_order": "bgr",
          "scale": 0.5,
          "flip": True,
      },
      "model": {"image_size": 227, "width": 1.0},
  }
  (tmp_path / "config.json").write_text(json.dumps(old))
  (tmp_path / "preprocessing.json").write_text(
      json.dumps({"dataset": "digits", "image_size": 256, "crop_size": 227, "scale": 0.5})
  )
  config = run_dir.read_config(str(tmp_path))
  assert "mean" not in config.augment and config.augment.flip is True
  assert "image_size" not in config.model and config.input.crop_size == 227
  spec = run_dir.read_input_spec(str(tmp_path), config)
  assert (spec.mean_kind, spec.channel_order, spec.crop_size, spec.resize) == (
      "pixel",
      "bgr",
      227,
      "round",  # a config.json from before dataset.resize: the rule of that time
  )
  want = (IMAGES - np.array([10.0, 20.0, 30.0])) / np.array([2.0, 4.0, 8.0]) * 0.5
  np.testing.assert_allclose(_fed(spec), want[..., ::-1], atol=1e-5)
  # A config.json without any input key: the paper's input.
  bare = config_schema.upgrade({"augment": {"flip": True}, "model": {}})
  assert bare["input"] == {
      "mean": "dataset",
      "mean_rgb": [0.0, 0.0, 0.0],
      "std_rgb": [],
      "channel_order": "rgb",
      "scale": 1.0,
      "view": "crop",
      "crop_size": 224,
  }


def test_upgrade_is_idempotent_on_todays_configs():
  new = json.loads(torchvision.get_config().to_json_best_effort())
  assert config_schema.upgrade(new) == new
  assert config_schema.upgrade(config_schema.upgrade(new)) == new


def test_a_preprocessing_json_of_another_image_size_is_refused(tmp_path):
  spec = InputSpec.from_config(tiny.config(), STATS)
  run_dir.write_preprocessing(str(tmp_path), {**spec.to_json(), "image_size": 512}, "x", 1)
  with pytest.raises(ValueError, match="image_size 512.*preprocesses to 256"):
    run_dir.read_input_spec(str(tmp_path), None, STATS)
