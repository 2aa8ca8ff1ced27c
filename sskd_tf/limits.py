"""The largest values the integer settings take (main.py's flags are bounded by them);
TensorFlow-free, for the flag modules."""

# TensorFlow holds sizes (of an image, say) as 32-bit integers; a larger count or size
# (batch, epochs, images) could not be held anyway.
INT32_MAX = 2**31 - 1
# The seeds numpy's global generator takes (keras.utils.set_random_seed seeds it).
SEED_MAX = 2**32 - 1
