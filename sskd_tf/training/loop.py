"""Keras' `fit`, epoch by epoch, on a run's epoch cut (training/schedule.py).

Keras' fit gives every epoch of a call the same number of steps; the authors' epochs last
390 or 391 steps, and their last one may run on past a whole epoch. So a run calls `fit`
once per epoch, for that epoch's steps, on the training stream from the epoch's first (or,
resumed, next) step, with one callback list for the whole run (`EpochByEpoch`): its
callbacks see one training and its History holds every epoch. The cost of a call (a new
iterator over the stream; the train function is traced once and kept) is small beside an
epoch.
"""
from sskd_tf.training.callbacks import EpochByEpoch


def current_epoch(cut, step, epochs):
    """The epoch that global step `step` falls in (the last one for the steps a run
    trains past its last whole epoch)."""
    epoch = 0
    while epoch + 1 < epochs and cut.first_step(epoch + 1) <= step:
        epoch += 1
    return epoch


def fit_epochs(distiller, stream, cut, epochs, callbacks=(), validation_data=None, verbose=1,
               stop_epoch=None):
    """Train `distiller` from its optimizer's step count to the end of a run of `epochs`
    epochs of `cut` (or to the end of epoch `stop_epoch - 1` of it), one `fit` call per
    epoch, and return the History of those epochs.

    stream(start_step): the training dataset from global step `start_step` on.
    callbacks: Keras callbacks, or an `EpochByEpoch` list built for this run.
    """
    step = int(distiller.optimizer.iterations.numpy())
    stop_epoch = epochs if stop_epoch is None else stop_epoch
    total = cut.last_step(stop_epoch - 1, epochs)
    if isinstance(callbacks, EpochByEpoch):
        callback_list = callbacks
    else:
        callback_list = EpochByEpoch(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                     verbose=verbose, epochs=stop_epoch, steps=None,
                                     model=distiller)
    callback_list.begin()
    epoch = current_epoch(cut, step, epochs)
    while step < total and not distiller.stop_training:
        end = cut.last_step(epoch, epochs)
        callback_list.set_steps(end - step)
        distiller.fit(stream(step), validation_data=validation_data, initial_epoch=epoch,
                      epochs=epoch + 1, steps_per_epoch=end - step, callbacks=callback_list,
                      shuffle=False, verbose=verbose)
        step, epoch = end, epoch + 1
    callback_list.end()
    return distiller.history
