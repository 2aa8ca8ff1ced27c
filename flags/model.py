"""Model flags (--teacher, --student, --keras_batch_norm)."""
from absl import flags

from sskd_tf.models import names

flags.DEFINE_string("teacher", "resnet32", f"Teacher network, one of: {names.choices()}.")
flags.DEFINE_string("student", "",
                    "Student network (same choices as --teacher); empty picks the teacher's "
                    "student: resnet* -> resnet8, wrn* -> wrn16_4, X_teacher -> X_student.")

flags.DEFINE_list("teacher_taps", [],
                  "Comma-separated layer names of the teacher whose outputs the method compares "
                  "(in order); required for a .keras or keras: teacher, replaces a built-in "
                  "network's own taps.")
flags.DEFINE_list("student_taps", [], "The student's layer names, paired with --teacher_taps.")
flags.DEFINE_bool("keras_batch_norm", False,
                  "Keras' BN update (biased moving variance) in ResNet, MobileNet and ResNeXt "
                  "instead of the authors' slim one (Bessel-corrected, n/(n-1)).")

flags.register_validator("teacher", names.is_model_name,
                         message=f"unknown model; choose one of: {names.choices()}")
flags.register_validator("student", lambda name: not name or names.is_model_name(name),
                         message=f"unknown model; choose one of: {names.choices()}")
