"""RunConfig from the parsed flags, shared by the modes that train."""
from flags.distill import parse_method_options
from flags.train import decay_points
from sskd_tf.training.run import RunConfig


def config_from_flags(flag_values, **overrides):
    """The RunConfig of main.py's flags; `overrides` replace fields."""
    method_options = parse_method_options(flag_values.method_options)
    if flag_values.method in ("svd", "eid", "svd_eccv"):
        method_options.setdefault("gradient", flag_values.svd_gradient)
        method_options.setdefault("backend", flag_values.svd_backend)
        method_options.setdefault("project_student", flag_values.project_student)
    fields = dict(
        teacher=flag_values.teacher,
        student=flag_values.student or None,
        method=flag_values.method,
        method_options=method_options,
        dataset=flag_values.dataset,
        data_dir=flag_values.data_dir,
        recipe=flag_values.recipe,
        epochs=flag_values.epochs,
        batch_size=flag_values.batch_size,
        learning_rate=flag_values.learning_rate,
        lr_decay_points=decay_points(flag_values.lr_decay_points),
        lr_decay_rate=flag_values.lr_decay_rate,
        weight_decay=flag_values.weight_decay,
        train_dir=flag_values.train_dir,
        teacher_weights=flag_values.teacher_weights,
        seed=flag_values.seed,
        strategy=flag_values.strategy,
        jit=flag_values.jit,
        deterministic=flag_values.deterministic,
        max_consecutive_skips=flag_values.max_consecutive_skips,
        overwrite=flag_values.overwrite,
    )
    fields.update(overrides)
    return RunConfig(**fields)
