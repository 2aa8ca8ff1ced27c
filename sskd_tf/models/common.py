"""Pieces every family shares: initialisers, weight decay, slim's batch norm and the
two-headed output."""
import keras
import tensorflow as tf


def variance_scaling(mode):
    """He initialisation, truncated normal, as the authors' `variance_scaling_initializer`
    (factor 2, not uniform). TF1 draws with stddev sqrt(1.3 * 2 / n), Keras with
    sqrt(2 / n) / 0.8796 = sqrt(1.29 * 2 / n): the same distribution to within 1%."""
    return keras.initializers.VarianceScaling(scale=2.0, mode=mode,
                                              distribution="truncated_normal")


def l2_decay(weight_decay):
    """The authors' `l2_regularizer(weight_decay)` adds weight_decay * sum(w ** 2) / 2;
    Keras's `L2(c)` adds c * sum(w ** 2), hence c = weight_decay / 2. None when 0."""
    return keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None


def network(image, logits, taps, name):
    """The functional model with the output dict every family returns."""
    return keras.Model(image, {"logits": logits, "features": list(taps)}, name=name)


def logits_model(model):
    """A model from the same input to the logits only, sharing the layers of `model`:
    the deployable network without distillation taps."""
    return keras.Model(model.input, model.output["logits"], name=f"{model.name}_logits")


@keras.saving.register_keras_serializable(package="sskd_tf")
class SlimBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training step updates the moving statistics as TF1's
    fused `slim.batch_norm` does (docs/method.md section 5, "BN"): the moving variance follows
    the Bessel-corrected batch variance, n / (n - 1) times the biased one with
    n = B*H*W the values per channel, and both averages take the form of TF1's
    `assign_moving_average`, m <- m - (m - value) * (1 - momentum).

    Normalisation (training and inference) is Keras' own, with the biased batch
    variance. With a mask or renorm, Keras' update is used unchanged. With Keras'
    `synchronized` (`synchronize_batch_norm`), the mean, the variance and n are those
    of the global batch of all replicas.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        inputs = keras.ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(inputs, None)
        count = keras.ops.cast(keras.ops.size(inputs) // keras.ops.size(mean), variance.dtype)
        context = tf.distribute.get_replica_context()
        if self.synchronized and context is not None:
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        corrected = variance * count / keras.ops.maximum(count - 1.0, 1.0)
        decay = 1.0 - self.momentum
        for moving, value in ((self.moving_mean, mean), (self.moving_variance, corrected)):
            current = keras.ops.cast(moving, value.dtype)
            moving.assign(current - (current - value) * decay)
        outputs = keras.ops.batch_normalization(
            inputs, mean, variance, axis=self.axis,
            offset=keras.ops.cast(self.beta, inputs.dtype) if self.center else None,
            scale=keras.ops.cast(self.gamma, inputs.dtype) if self.scale else None,
            epsilon=self.epsilon)
        return keras.ops.cast(outputs, self.compute_dtype)


def batch_norm_layers(layers):
    """Every batch-norm layer of `layers` and of their sublayers (slim's, Keras' own, those
    of a loaded model or of a method's heads), once each."""
    found = []
    for layer in layers:
        # Layer._flatten_layers, which Keras' own Model.layers calls: Keras has no public
        # listing of a layer's sublayers at every depth (nested models, lists of layers).
        for sublayer in layer._flatten_layers():
            if isinstance(sublayer, keras.layers.BatchNormalization) and all(
                    sublayer is not other for other in found):
                found.append(sublayer)
    return found


def synchronize_batch_norm(layers, synchronized=True):
    """Set every batch-norm layer of `layers` to compute its training statistics over the
    global batch of all replicas (`synchronized`, Keras' option) or over its replica's
    share (False, Keras' default). Inference, which uses the moving statistics, is
    unchanged either way."""
    for layer in batch_norm_layers(layers):
        layer.synchronized = synchronized
