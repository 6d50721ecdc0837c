"""The error a method raises when it cannot apply to the loaded model."""


class MethodError(ValueError):
    """A method that cannot apply to this model (known only once it is loaded): the worker
    prints it as one line and exits before training."""
