"""Distillation flags: the method and its options."""
import ast

from absl import flags

from sskd_tf.distill.names import METHOD_NAMES, SVD_GRADIENTS
from sskd_tf.errors import UserError

# sskd_tf.distill.svd.BACKENDS, spelled out here to keep TensorFlow out of flag
# parsing (a test checks the two agree).
SVD_BACKENDS = ("svd", "gram", "hybrid", "batched")
# sskd_tf.distill.svd.DECOMPOSITION_DEVICES, likewise.
DECOMPOSITION_DEVICES = ("auto", "cpu", "accelerator")

flags.DEFINE_enum("method", "svd", METHOD_NAMES,
                  "Distillation method; none trains the student alone.")
flags.DEFINE_enum("svd_gradient", "original", SVD_GRADIENTS,
                  "KD-SVD / KD-EID backward pass: original (the authors' formula, faithful) "
                  "or exact (the true SVD gradient, guarded against degenerate spectra).")
flags.DEFINE_enum("svd_backend", "svd", SVD_BACKENDS,
                  "KD-SVD / KD-EID decomposition, same gradient formulas in all: svd "
                  "(tf.linalg.svd, faithful), gram (eigh of the smaller Gram matrix: fastest, "
                  "its own sign rule, so another loss where tf.linalg.svd's teacher signs "
                  "differ) or hybrid (tf.linalg.svd only where signs matter: the loss of "
                  "svd, faster) or batched (dense batched operations only, no Svd/Eigh op: "
                  "the GPU route, best with --jit; gram's signs). See docs/benchmarks.md.")
flags.DEFINE_enum("decomposition_device", "auto", DECOMPOSITION_DEVICES,
                  "KD-SVD / KD-EID: where the decompositions run. auto (faithful: the host "
                  "CPU whenever the step runs on a GPU/TPU, as the authors), cpu, or "
                  "accelerator (with the step; use with --svd_backend=batched or gram and --jit).")
flags.DEFINE_bool("project_student", False,
                  "KD-SVD: map student taps of another width to the teacher's with a learned "
                  "1x1 conv + BN (as the authors' TF2 rewrite).")
flags.DEFINE_list("method_options", [],
                  "Method hyperparameters as name=value pairs, e.g. weight=2,clip_scale=0.5 "
                  "(see each method's constructor; `--mode=tune` writes them).")


def parse_method_options(items):
    """['weight=2', 'projection=pca'] -> {'weight': 2, 'projection': 'pca'}."""
    options = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name.strip():
            raise UserError(f"--method_options: {item!r} is not name=value")
        try:
            options[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[name.strip()] = value.strip()
    return options


def _valid_options(items):
    try:
        parse_method_options(items)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from None
    return True


flags.register_validator("method_options", _valid_options)
