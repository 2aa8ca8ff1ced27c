"""Keras files a user names (`--teacher_weights`, a `.keras` `--teacher` or `--student`),
checked before Keras reads them: Keras says "File not found" of any `.keras` file it
cannot open as a zip archive, and `load_weights` of a `.weights.h5` that does not fit
assigns what fits, warns for each layer that does not and gives no shapes."""
import os
import re
import tempfile
import zipfile

import h5py

from sskd_tf.errors import UserError

# What a Keras file of each kind is, the test that a file is one, and what writes it.
_FORMATS = {".keras": ("zip archive", zipfile.is_zipfile, "model.save"),
            ".weights.h5": ("HDF5 file", h5py.is_hdf5, "model.save_weights")}


def check_readable(path, subject):
    """Raise a UserError, about `subject` (e.g. "--teacher_weights"), saying why `path`
    cannot be read as the Keras file its name says: missing, a directory, unreadable
    (permissions) or not of that format (truncated, or another kind of file)."""
    suffix = next((suffix for suffix in _FORMATS if path.endswith(suffix)), None)
    if not os.path.exists(path):
        raise UserError(f"{subject}: no such file {path!r}")
    if os.path.isdir(path):
        raise UserError(f"{subject}: cannot read {path!r}: it is a directory, not a {suffix} file")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise UserError(f"{subject}: cannot read {path!r}: {error.strerror}") from None
    if suffix is not None:
        kind, is_kind, writer = _FORMATS[suffix]
        if not is_kind(path):
            raise UserError(f"{subject}: cannot read {path!r}: it is not a complete {kind}, as a "
                            f"{suffix} file is (truncated, or another kind of file); write it "
                            f"again with Keras' {writer}")


def _natural_order(name):
    """Sort key putting layers/conv2d_2 before layers/conv2d_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _stored_weights(path):
    """{array path: (shape, layer name)} of a .weights.h5 file."""
    arrays = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            arrays[name] = (tuple(item.shape), item.parent.attrs.get("name", "?"))

    with h5py.File(path, "r") as file:
        file.visititems(visit)
    return arrays


def weights_h5_mismatch(model, path, subject):
    """How the arrays of the .weights.h5 file `path` differ from those `model` saves
    (what `model.load_weights` would assign them to): "N weight arrays differ ..., the
    first: ..." with both shapes, or None when they fit. A file h5py cannot read is a
    UserError about `subject`."""
    with tempfile.TemporaryDirectory() as scratch:
        own = os.path.join(scratch, "model.weights.h5")
        model.save_weights(own)
        expected = _stored_weights(own)
    try:
        found = _stored_weights(path)
    except OSError as error:
        raise UserError(f"{subject}: cannot read {path!r}: {error}") from None
    differing = sorted((name for name in expected.keys() | found.keys()
                        if expected.get(name, (None,))[0] != found.get(name, (None,))[0]),
                       key=_natural_order)
    if not differing:
        return None
    name = differing[0]
    if name not in found:
        first = f"{expected[name][1]} ({name}) {expected[name][0]} is missing from the file"
    elif name not in expected:
        first = f"the file's {found[name][1]} ({name}) {found[name][0]} is not in {model.name}"
    else:
        (wanted, layer), (shape, file_layer) = expected[name], found[name]
        in_file = f", the file's {file_layer}" if file_layer != layer else ""
        first = f"{layer} ({name}{in_file}) is {shape} in the file, {wanted} in {model.name}"
    return (f"{len(differing)} weight arrays differ (the file holds {len(found)}, {model.name} "
            f"{len(expected)}), the first: {first}")
