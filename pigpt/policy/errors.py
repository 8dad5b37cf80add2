"""The one exception the policy package raises for bad input."""


class PolicyError(ValueError):
    """A reward spec, reward output or loss argument that can't be used, with a message that says why and
    what to do."""
