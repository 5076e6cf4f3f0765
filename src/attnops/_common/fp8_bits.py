"""fp8 bytes assembled by hand in Triton kernels, bit-exact with PyTorch's conversions from fp32.

PyTorch rounds to nearest even. NVIDIA GPUs have no e4m3fnuz conversion, and the Triton
interpreter's fp8 casts do not round to nearest even as the GPU and PyTorch do, so the codes are
computed from the fp32 bit pattern instead of cast. Imported by the Triton kernel modules only.
"""

from __future__ import annotations

import triton
import triton.language as tl

# A kv_cache_dtype as the kernels' FP8 constexpr: 0 for "auto", else the format of
# saturated_fp8_bits (vLLM's "fp8"/"fp8_e4m3" caches hold e4m3fn, "fp8_e5m2" e5m2).
FP8_KINDS = {"auto": 0, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 2}


@triton.jit
def e4m3_bits(x, BIAS: tl.constexpr):
    """fp32 ``x`` (already clamped to the format's range) as e4m3 bytes, round-to-nearest-even.

    ``BIAS`` 7 is e4m3fn, 8 is e4m3fnuz (no negative zero).
    """
    a = tl.abs(x)
    bits = a.to(tl.uint32, bitcast=True)
    # Normal range: round the fp32 mantissa to 3 bits (ties to even), then
    # move the exponent from bias 127 to BIAS; a carry bumps the exponent.
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) - ((127 - BIAS) << 3)
    # Subnormals are multiples of 2^(-2 - BIAS): adding 2^23 rounds the multiple
    # to an integer (ties to even) in fp32 arithmetic; code 8 is the smallest normal.
    if BIAS == 8:
        subnormal_unit_inv, min_normal = 1024.0, 0.0078125
    else:
        subnormal_unit_inv, min_normal = 512.0, 0.015625
    subnormal = ((a * subnormal_unit_inv + 8388608.0) - 8388608.0).to(tl.uint32)
    code = tl.where(a < min_normal, subnormal, normal)
    sign = (x.to(tl.uint32, bitcast=True) >> 31) << 7
    if BIAS == 8:
        # 0x80 is NaN in e4m3fnuz, so a zero keeps a positive sign.
        sign = tl.where(code == 0, 0, sign)
    return (code | sign).to(tl.uint8)


@triton.jit
def e5m2_bits(x):
    """fp32 ``x`` (already clamped to +-57344) as e5m2 bytes, round-to-nearest-even."""
    a = tl.abs(x)
    bits = a.to(tl.uint32, bitcast=True)
    # As e4m3_bits: a 2-bit mantissa, exponent bias 15.
    normal = ((bits + 0xFFFFF + ((bits >> 21) & 1)) >> 21) - ((127 - 15) << 2)
    # Subnormals are multiples of 2^-16; code 4 is the smallest normal, 2^-14.
    subnormal = ((a * 65536.0 + 8388608.0) - 8388608.0).to(tl.uint32)
    code = tl.where(a < 0.00006103515625, subnormal, normal)
    sign = (x.to(tl.uint32, bitcast=True) >> 31) << 7
    return (code | sign).to(tl.uint8)


@triton.jit
def saturated_fp8_bits(x, FORMAT: tl.constexpr):
    """fp32 ``x`` clamped to the format's finite range and encoded (``FORMAT`` 1: e4m3fn, 2: e5m2), as
    PyTorch's ``x.clamp(-max, max).to(fp8)``: infinities saturate, NaN stays NaN (0x7F, sign kept)."""
    if FORMAT == 1:
        code = e4m3_bits(tl.minimum(tl.maximum(x, -448.0), 448.0), 7)
    else:
        code = e5m2_bits(tl.minimum(tl.maximum(x, -57344.0), 57344.0))
    nan = ((x.to(tl.uint32, bitcast=True) >> 31) << 7 | 0x7F).to(tl.uint8)
    return tl.where(x != x, nan, code)
