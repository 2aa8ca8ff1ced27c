"""`--mode=summary`: FLOPs, parameters and distillation taps of the teacher and the student."""
import sskd_tf.data
from sskd_tf import models


def _millions(count, digits):
    return f"{count / 1e6:.{digits}f}M"


def _shape(tap):
    return "x".join(str(size) for size in tap.shape[1:])


def summary_rows(teacher, student):
    """Rows (label, teacher, student, teacher/student) of the summary table."""
    flops = [models.count_flops(model) for model in (teacher, student)]
    params = [models.count_params(model) for model in (teacher, student)]
    moving = [models.count_params(model, include_non_trainable=True) - trainable
              for model, trainable in zip((teacher, student), params)]
    rows = [
        ("model", teacher.name, student.name, ""),
        ("FLOPs", _millions(flops[0], 1), _millions(flops[1], 1),
         f"{flops[0] / flops[1]:.2f}x"),
        ("params", _millions(params[0], 2), _millions(params[1], 2),
         f"{params[0] / params[1]:.2f}x"),
        ("BN moving statistics", f"{moving[0]:,}", f"{moving[1]:,}", ""),
    ]
    teacher_taps, student_taps = (model.output["features"] for model in (teacher, student))
    for index in range(max(len(teacher_taps), len(student_taps))):
        rows.append((f"tap {index}",
                     _shape(teacher_taps[index]) if index < len(teacher_taps) else "-",
                     _shape(student_taps[index]) if index < len(student_taps) else "-", ""))
    return rows


def format_table(rows):
    header = ("", "teacher", "student", "teacher/student")
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in (header, *rows)]
    return "\n".join(lines)


def run(flag_values):
    teacher_name = flag_values.teacher
    student_name = flag_values.student or models.student_for(teacher_name)
    info = sskd_tf.data.get_dataset_info(flag_values.dataset)
    teacher = models.build_model(teacher_name, info.num_classes, info.image_shape)
    student = models.build_model(student_name, info.num_classes, info.image_shape)
    shape = "x".join(str(size) for size in info.image_shape)
    print(f"{flag_values.dataset}: {info.num_classes} classes, {shape} inputs; "
          "FLOPs = 2 x multiply-adds per image; params = trainable parameters")
    print(format_table(summary_rows(teacher, student)))
