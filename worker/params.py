"""The convolution parameters a job may carry, as convcore's keyword arguments."""
CONV_PARAMS = ("stride", "padding", "dilation", "groups", "padding_mode", "algorithm")


def conv_kwargs(params: dict) -> dict:
    return {k: params[k] for k in CONV_PARAMS if k in params}
