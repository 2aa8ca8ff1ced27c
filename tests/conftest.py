import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Saved students hold the port's SlimBatchNormalization, which loads once its module is
# imported (as main.py does); every test process imports it.
import sskd_tf.models.common  # noqa: E402,F401
