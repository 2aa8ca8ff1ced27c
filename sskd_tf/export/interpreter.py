"""Running a .tflite model with the LiteRT interpreter that ships with TensorFlow
(tf.lite.Interpreter): logits of a set of images, and the latency of one image.

TensorFlow marks tf.lite.Interpreter deprecated in favour of the `ai-edge-litert`
package, whose `ai_edge_litert.interpreter.Interpreter` has the same interface; TF 2.21
still ships and runs it, so the export needs no extra dependency. Its deprecation
notice is silenced here, where that choice is made.
"""
import statistics
import time
import warnings

import numpy as np
import tensorflow as tf

EVAL_BATCH = 100
WARMUP_RUNS = 5


def load_interpreter(model_content, num_threads):
    """A tf.lite.Interpreter of the .tflite bytes, on `num_threads` CPU threads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)


def _quantize(values, details):
    """float -> the tensor's integer type by its (scale, zero point); floats pass through."""
    if not np.issubdtype(details["dtype"], np.integer):
        return values.astype(details["dtype"])
    scale, zero_point = details["quantization"]
    limits = np.iinfo(details["dtype"])
    return np.clip(np.round(values / scale + zero_point), limits.min, limits.max).astype(
        details["dtype"])


def _dequantize(values, details):
    if not np.issubdtype(details["dtype"], np.integer):
        return values.astype(np.float32)
    scale, zero_point = details["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _resize(interpreter, batch):
    input_details = interpreter.get_input_details()[0]
    if input_details["shape"][0] != batch:
        interpreter.resize_tensor_input(input_details["index"],
                                        [batch] + list(input_details["shape"][1:]))
    interpreter.allocate_tensors()
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


def logits(interpreter, images, batch_size=EVAL_BATCH):
    """float32 logits [N, classes] of float32 `images` [N, H, W, C], batch by batch; an
    integer model's input is quantised and its output dequantised."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        input_details, output_details = _resize(interpreter, len(batch))
        interpreter.set_tensor(input_details["index"], _quantize(batch, input_details))
        interpreter.invoke()
        outputs.append(_dequantize(interpreter.get_tensor(output_details["index"]),
                                   output_details))
    return np.concatenate(outputs)


def median_ms(call, inputs, warmup=WARMUP_RUNS):
    """Median milliseconds of `call(x)` over `inputs`, after `warmup` untimed calls."""
    for x in inputs[:warmup]:
        call(x)
    times = []
    for x in inputs:
        started = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def latency_ms(interpreter, images, runs):
    """Median milliseconds of setting one image (batch 1) and invoking, over `runs`
    images cycling through `images`, after a few warm-up runs."""
    input_details, _ = _resize(interpreter, 1)
    inputs = [_quantize(images[k % len(images)][None], input_details) for k in range(runs)]

    def set_and_invoke(image):
        interpreter.set_tensor(input_details["index"], image)
        interpreter.invoke()

    return median_ms(set_and_invoke, inputs)
