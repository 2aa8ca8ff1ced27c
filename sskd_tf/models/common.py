"""Pieces every family shares: initialisers, weight decay and the two-headed output."""
import keras


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
