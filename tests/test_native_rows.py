"""The C paths of rms_norm and rope (runtime/csrc/rows.c) compute what the torch code computes: rope
to the bit, rms_norm up to the order of its sum of squares; cases they do not take fall back."""
import pytest
import torch
import torch.nn.functional as F

from runtime import native
from runtime.ops import native_rows
from runtime.ops.norms import rms_norm
from runtime.ops.rotary import rope

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.unavailable_reason()}")


def rotate_half_reference(x, cos, sin):
    """Transformers' apply_rotary_pos_emb on the first R dims, the rest passed through."""
    r = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    xr = x[..., :r]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    return torch.cat((xr * cos + torch.cat((-x2, x1), dim=-1) * sin, x[..., r:]), dim=-1)


def tables(b, s, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(b, s, r // 2, generator=g) * 10
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


@needs_native
@pytest.mark.parametrize("shape", [(1, 1, 96), (2, 3, 768), (4, 7)])
def test_rms_norm_c_path_equals_torch(shape):
    x = torch.randn(shape) * 3
    w = torch.randn(shape[-1])
    got = native_rows.rms_norm(x, w, 1e-6)
    assert got is not None
    torch.testing.assert_close(got, F.rms_norm(x, (shape[-1],), w, 1e-6), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), got, rtol=0, atol=0)     # the op takes it


@needs_native
@pytest.mark.parametrize("b, h, s, d, r", [(1, 12, 1, 64, 64), (2, 4, 3, 64, 64), (1, 2, 5, 64, 32), (3, 2, 1, 8, 8)])
def test_rope_c_path_equals_rotate_half_to_the_bit(b, h, s, d, r):
    # q as the model has it: [B, S, H, D] memory viewed as [B, H, S, D]
    x = torch.randn(b, s, h, d).transpose(1, 2)
    cos, sin = tables(b, s, r)
    got = native_rows.rope(x, cos, sin)
    if r == d:
        assert got is not None
    got = rope(x, cos, sin)
    assert torch.equal(got, rotate_half_reference(x, cos, sin))


@needs_native
def test_rope_c_path_takes_one_table_for_every_row():
    x = torch.randn(3, 2, 4, 16)
    cos, sin = tables(1, 4, 16)
    got = native_rows.rope(x, cos, sin)
    assert got is not None and torch.equal(got, rotate_half_reference(x, cos.expand(3, 4, 16), sin.expand(3, 4, 16)))


def test_cases_the_c_paths_do_not_take_fall_back_to_torch_with_the_same_numbers():
    x = torch.randn(2, 3, 64).bfloat16()
    assert native_rows.rms_norm(x, torch.ones(64).bfloat16(), 1e-6) is None
    big = torch.randn(native_rows.MAX_ELEMENTS // 64 + 1, 64)
    assert native_rows.rms_norm(big, torch.ones(64), 1e-6) is None
    q = torch.randn(1, 2, 3, 16, requires_grad=True)
    cos, sin = tables(1, 3, 16)
    assert native_rows.rope(q, cos, sin) is None         # autograd needs torch's ops
    out = rope(q, cos, sin)
    out.sum().backward()
    assert q.grad is not None
    torch.testing.assert_close(out, rotate_half_reference(q.detach(), cos, sin), rtol=0, atol=0)
