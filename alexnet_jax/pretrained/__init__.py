"""Published AlexNets in and out of run directories (`python -m alexnet_jax.convert`).

formats.py     the formats (torchvision, pytorch_grouped, caffe): their keys, the layouts'
               conversions to and from this project's parameter tree, the file readers
caffemodel.py  Caffe's .caffemodel / .binaryproto read from the protobuf wire format
keras_h5.py    the Keras tutorial's BatchNorm AlexNet: .keras / .weights.h5 / .h5 via h5py
convert.py     import_run (a file -> a run directory), export_run (a run -> a .pth or a
               Keras .weights.h5)
"""

from alexnet_jax.pretrained import caffemodel, keras_h5
from alexnet_jax.pretrained.convert import (
    export_run,
    import_run,
    init_run,
    model_for,
    preset_config,
    write_run,
)
from alexnet_jax.pretrained.formats import (
    FORMATS,
    LAYERS,
    PRESETS,
    PYTORCH_FORMATS,
    ConversionError,
    Format,
    check_shapes,
    default_class_names,
    expected_shapes,
    from_framework,
    layers_from_caffemodel,
    layers_from_state_dict,
    load_state_dict,
    read_caffe_mean,
    to_framework,
)

__all__ = [
    "FORMATS",
    "LAYERS",
    "PRESETS",
    "PYTORCH_FORMATS",
    "ConversionError",
    "Format",
    "caffemodel",
    "check_shapes",
    "default_class_names",
    "expected_shapes",
    "export_run",
    "from_framework",
    "import_run",
    "init_run",
    "keras_h5",
    "layers_from_caffemodel",
    "layers_from_state_dict",
    "load_state_dict",
    "model_for",
    "preset_config",
    "read_caffe_mean",
    "to_framework",
    "write_run",
]
