"""Names of the registered distillation methods, free of TensorFlow for flag
validation; a test checks they equal the registry's."""
METHOD_NAMES = ("none", "svd", "eid", "svd_eccv", "soft_logits", "fitnet", "at", "fsp",
                "rdim", "self_distill")
SVD_GRADIENTS = ("original", "exact")
