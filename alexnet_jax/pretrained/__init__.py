"""Published AlexNets in and out of run directories (`python -m alexnet_jax.convert`).

formats.py     the formats (torchvision, pytorch_grouped, caffe): their keys, the layouts'
               conversions to and from this project's parameter tree, the file readers
caffemodel.py  Caffe's .caffemodel / .binaryproto read from the protobuf wire format
convert.py     import_run (a file -> a run directory), export_run (a run -> a .pth)
"""

from alexnet_jax.pretrained import caffemodel
from alexnet_jax.pretrained.convert import (
    export_run,
    import_run,
    model_for,
    preset_config,
    write_run,
)
from alexnet_jax.pretrained.formats import (
    FORMATS,
    LAYERS,
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
    "layers_from_caffemodel",
    "layers_from_state_dict",
    "load_state_dict",
    "model_for",
    "preset_config",
    "read_caffe_mean",
    "to_framework",
    "write_run",
]
