"""alexnet_jax.data.registry: each dataset.name goes to the source that declares its form, and
a new source is one module (its SourceKind) plus one line in KINDS."""

import numpy as np
import pytest

from alexnet_jax import data as data_lib
from alexnet_jax.data import digits, folder, oxford17, registry, sources, tfds_source
from tests.data_helpers import dataset_config, fresh_user_cache


@pytest.mark.parametrize(
    "name, kind",
    [
        ("digits", digits.KIND),
        ("folder:/data/photos", folder.KIND),
        ("folder:~/photos", folder.KIND),
        ("oxford17:/data/17flowers.tgz", oxford17.KIND),
        ("imagenet2012", tfds_source.KIND),
        ("mnist", tfds_source.KIND),
        ("digitsx", tfds_source.KIND),  # a form is the whole name or its prefix, not a guess
    ],
)
def test_each_name_goes_to_the_source_that_declares_its_form(name, kind):
  assert registry.kind_of(name) is kind


def test_tfds_comes_last_and_the_forms_are_distinct():
  assert registry.KINDS[-1] is tfds_source.KIND
  forms = [k.form for k in registry.KINDS]
  assert len(set(forms)) == len(forms)


def test_the_unknown_name_message_lists_every_form(tmp_path):
  with pytest.raises(data_lib.DatasetError) as e:
    registry.open_raw(
        data_lib.Settings.of(dataset_config(name="no_such_dataset_xyz", data_dir=str(tmp_path)))
    )
  msg = str(e.value)
  assert msg.startswith("unknown dataset 'no_such_dataset_xyz': use ")
  for kind in registry.KINDS:
    assert kind.form in msg, kind.form
  assert '"imagenet2012"' in msg and '"folder:/path"' in msg and '"oxford17:/path"' in msg


def test_names_prepared_data_are_checked_by(tmp_path, monkeypatch):
  assert registry.canonical_name("digits") == "digits"
  assert registry.canonical_name("mnist") == "mnist"
  monkeypatch.chdir(tmp_path)
  assert registry.canonical_name("folder:photos") == f"folder:{tmp_path / 'photos'}"


def test_where_prepared_data_go_by_default(tmp_path, monkeypatch):
  fresh_user_cache(monkeypatch, tmp_path)
  settings = lambda **kw: data_lib.Settings.of(dataset_config(**kw))  # noqa: E731
  assert registry.default_location(settings(name="digits", data_dir=None)) == str(
      tmp_path / "user_cache" / "alexnet_jax_prepared" / "digits_round"
  )
  assert registry.default_location(settings(name="mnist", data_dir=str(tmp_path))) == str(
      tmp_path / "alexnet_jax_prepared" / "mnist_round"
  )
  photos = settings(name=f"folder:{tmp_path}/photos", resize="warp", exif_transpose=True)
  assert registry.default_location(photos) == str(
      tmp_path / "photos" / ".alexnet_jax_prepared" / "warp_exif"
  )


def test_a_new_source_is_one_kind_and_one_line(tmp_path, monkeypatch):
  """A source declared here (a SourceKind over digits' in-memory split) and added to KINDS:
  opening, its signature, its prepared location and the streams all go through it."""
  fresh_user_cache(monkeypatch, tmp_path)
  rs = np.random.RandomState(0)
  images = rs.randint(0, 256, (12, 8, 8, 1)).astype(np.uint8)
  labels = np.arange(12) % 3

  def open_source(settings):
    split = lambda i: digits.ArraySplit(  # noqa: E731
        images[i], labels[i], [f"n{k}" for k in i], settings.resize
    )
    return sources.Source(
        settings.name,
        ("a", "b", "c"),
        split(np.arange(9)),
        split(np.arange(9, 12)),
        str(tmp_path / "stats.npz"),
        "numbers:1",
        "twelve numbers",
    )

  kind = sources.SourceKind(
      form='"numbers:"',
      matches=lambda name: name.startswith("numbers:"),
      open=open_source,
      identity=lambda settings: (("a", "b", "c"), "numbers:1"),
      prepared_dir=lambda settings: str(tmp_path / "prepared"),
  )
  monkeypatch.setattr(registry, "KINDS", (kind, *registry.KINDS))
  config = dataset_config(name="numbers:twelve")
  src = data_lib.open_dataset(config)
  assert (src.name, src.info.num_train, src.info.num_eval) == ("numbers:twelve", 9, 3)
  assert registry.cheap_identity(src.settings) == (("a", "b", "c"), "numbers:1")
  assert registry.default_location(src.settings) == str(tmp_path / "prepared")
  batch = next(
      iter(data_lib.split_iterator(src, "eval", global_batch_size=4, num_shards=1, shard_index=0))
  )
  assert batch["image"].shape == (4, 256, 256, 3)
  np.testing.assert_array_equal(batch["label"][:3], labels[9:12])
  assert list(batch["mask"]) == [True, True, True, False]
