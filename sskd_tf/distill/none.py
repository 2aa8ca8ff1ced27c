"""No distillation: the student (or a teacher) trained alone on its labels."""
from sskd_tf.distill.base import METHODS, DistillationMethod


@METHODS.register("none")
class NoDistillation(DistillationMethod):
    """Cross-entropy and weight decay only (the 'Student' baseline of docs/method.md section 5)."""

    library_name = "NoDistillation"
    role = "baseline"
    needs_teacher = False
    reads = "logits"
    min_taps = 0

    def call(self, student_out, teacher_out, labels, training=False):
        del student_out, teacher_out, labels, training
        return {}
