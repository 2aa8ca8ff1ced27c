"""The optimizers of `--optimizer` (docs/method.md section 5, "Optimizer").

Both recipes of the authors step with TF1's `tf.train.MomentumOptimizer(lr, 0.9,
use_nesterov=True)`. Its slot is an accumulator of gradients,
    a <- m a + g,    w <- w - (g lr + a m lr),
so the learning rate of the current step scales the whole update. Keras' SGD keeps
a velocity with the learning rate folded in (v <- m v - lr g), so for about
1 / (1 - m) steps after a learning-rate decay it still moves at the old rate.
`TF1Momentum` is the authors' update and the default; `keras_sgd` is Keras' SGD.
"""
import keras
from keras import ops

from sskd_tf.registry import Registry

OPTIMIZERS = Registry("optimizer")


@keras.saving.register_keras_serializable(package="sskd_tf")
class TF1Momentum(keras.optimizers.Optimizer):
    """Momentum SGD with TF1's accumulator (ApplyMomentum kernel, in its order of operations).

    One slot per variable, `accumulator` (a variable, so tf.train.Checkpoint saves
    it and a resumed run continues it). With nesterov=False the step is w <- w - lr a.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=True, name="tf1_momentum",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = momentum
        self.nesterov = nesterov

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.accumulators = [self.add_variable_from_reference(variable, "accumulator")
                             for variable in variables]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)
        accumulator = self.accumulators[self._get_variable_index(variable)]
        self.assign(accumulator, accumulator * momentum + gradient)
        if self.nesterov:
            self.assign_sub(variable, gradient * learning_rate
                            + accumulator * momentum * learning_rate)
        else:
            self.assign_sub(variable, accumulator * learning_rate)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


OPTIMIZERS.register("tf1_momentum", TF1Momentum)
OPTIMIZERS.register("keras_sgd", keras.optimizers.SGD)


def build_optimizer(name, learning_rate, momentum, nesterov):
    """The optimizer `name` (tf1_momentum or keras_sgd) with a learning rate (or schedule)."""
    return OPTIMIZERS.get(name)(learning_rate, momentum=momentum, nesterov=nesterov)
