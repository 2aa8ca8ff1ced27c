"""Fixtures every test module shares: the tiny digits configuration and one trained teacher
per session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# Saved students hold the port's SlimBatchNormalization, which loads once its module is
# imported (as main.py does); every test process imports it.
import sskd_tf.models.common  # noqa: E402,F401

# The tiny run of the end-to-end tests: 128 digits images at 8x8 in batches of 64, one
# epoch (the authors' cut: int(128 / 64) + 1 = 3 steps), 64 validation images.
TINY = dict(teacher="resnet8", student="resnet8", dataset="digits", image_size=8, batch_size=64,
            take_train=128, take_test=64, epochs=1, verbose=0)


@pytest.fixture(scope="session")
def distilled_run(tmp_path_factory):
    """(train_dir, results) of the session's finished KD-SVD run on TINY, which trained its
    teacher first, in train_dir/teacher/."""
    from sskd_tf.training.config import RunConfig
    from sskd_tf.training.run import train

    train_dir = str(tmp_path_factory.mktemp("distilled_run"))
    return train_dir, train(RunConfig(method="svd", train_dir=train_dir, **TINY))


@pytest.fixture(scope="session")
def teacher_run(distilled_run):
    """The train_dir of a finished run of resnet8 alone on TINY: the teacher of the
    session's distillation tests (copied as a run's cached train_dir/teacher/, whose
    settings it has, or given as --teacher_weights: its student.keras). Read only."""
    return os.path.join(distilled_run[0], "teacher")
