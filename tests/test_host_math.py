"""The launchers' plain-Python grid helpers give exactly Triton's values (kernels/host_math.py)."""
import triton

from convnext_fast.kernels.host_math import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_match_triton():
    for a in list(range(0, 2100)) + [2**31 - 1, 2**31, 2**40 + 3]:
        assert next_power_of_2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 7, 16, 49, 1024, 2**31):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
