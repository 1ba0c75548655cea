"""Integer helpers for the launchers' host code: grid sizes and block shapes.

``triton.cdiv`` and ``triton.next_power_of_2`` are ``ConstexprFunction`` objects since Triton 3.6:
every call from Python unwraps its arguments as constexprs and costs microseconds, and a launcher
makes up to a dozen such calls per launch, a visible share of a small call's host time. These are
the same functions in plain Python. Inside ``@triton.jit`` code keep ``tl.cdiv``.
"""


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for integers, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n for n >= 1, and 0 for n = 0, as triton.next_power_of_2."""
    return 0 if n == 0 else 1 << (n - 1).bit_length()
