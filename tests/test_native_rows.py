"""The C paths of rms_norm, rope and silu (runtime/csrc/rows.c) compute what the torch code computes: rope
to the bit, rms_norm up to the order of its sum of squares, silu within a few ulp (another exp); cases
they do not take fall back. The elementwise ops and copies a replayed decode step runs in C give
aten's bits."""
import pytest
import torch
import torch.nn.functional as F

from runtime import native
from runtime import ops
from runtime.ops import native_rows
from runtime.ops.norms import rms_norm
from runtime.ops.rotary import rope
from runtime.ops.tensors import silu

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
    x = torch.randn(2, 3, 64).half()
    assert native_rows.rms_norm(x, torch.ones(64).half(), 1e-6) is None
    assert native_rows.rms_norm(x.float(), torch.ones(64).bfloat16(), 1e-6) is None      # mixed dtypes
    big = torch.randn(native_rows.MAX_ELEMENTS // 64 + 1, 64)
    assert native_rows.rms_norm(big, torch.ones(64), 1e-6) is None
    q = torch.randn(1, 2, 3, 16, requires_grad=True)
    cos, sin = tables(1, 3, 16)
    assert native_rows.rope(q, cos, sin) is None         # autograd needs torch's ops
    out = rope(q, cos, sin)
    out.sum().backward()
    assert q.grad is not None
    torch.testing.assert_close(out, rotate_half_reference(q.detach(), cos, sin), rtol=0, atol=0)


def test_the_c_kernels_build_wherever_there_is_a_c_compiler():
    # a source that fails to compile would silently leave every caller on its slow path
    if native._compiler() is None:
        pytest.skip("no C compiler on PATH")
    assert native.unavailable_reason() is None


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# 8 and more rows: the wide tiles (blocks of 8 rows on AVX-512, then the rest), up to 32 (bf16's limit)
@pytest.mark.parametrize("rows", [1, 3, 4, 8, 13, 32])
@pytest.mark.parametrize("n, k", [(37, 100), (64, 768)])
def test_c_linear_equals_f_linear(dtype, rows, n, k):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    got = native_rows.linear(x, w, b, rows_up_to={dtype: 32})
    assert got is not None and got.dtype == dtype and got.shape == (1, rows, n)
    # fp32 accumulation of exact products, the bias added in fp32, one rounding to the dtype
    want = (F.linear(x.double(), w.double()) + b.double()).to(dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        ulp = want.float().abs() * 2 ** -7
        assert bool(((got.float() - want.float()).abs() <= ulp + 1e-6).all())


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c_linear_gives_a_row_the_same_bits_in_any_block_of_rows(dtype):
    # a row alone (a decode pick), among 4 and among 8+ (a prompt's wide tiles): one summation order
    g = torch.Generator().manual_seed(11)
    x, w = torch.randn(19, 200, generator=g).to(dtype), torch.randn(45, 200, generator=g).to(dtype)
    alone = torch.cat([native_rows.linear(x[i:i + 1], w, None) for i in range(19)])
    for rows in (4, 8, 16, 19):
        assert torch.equal(native_rows.linear(x[:rows], w, None, rows_up_to={dtype: 32}), alone[:rows]), rows


def attention_reference(q, kc, vc, length, mask, scale):
    k, v = kc[:, :, :length], vc[:, :, :length]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


@needs_native
@pytest.mark.parametrize("b, h, hkv, d, past", [(1, 12, 4, 64, 40), (2, 4, 4, 16, 0), (3, 6, 2, 8, 300)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_step_writes_the_cache_and_equals_sdpa_over_it(b, h, hkv, d, past, masked):
    g = torch.Generator().manual_seed(past)
    cap = past + 5
    kc, vc = torch.randn(b, hkv, cap, d, generator=g), torch.randn(b, hkv, cap, d, generator=g)
    q = torch.randn(b, 1, h, d, generator=g).transpose(1, 2)           # as the model's views are
    k = torch.randn(b, 1, hkv, d, generator=g).transpose(1, 2)
    v = torch.randn(b, 1, hkv, d, generator=g).transpose(1, 2)
    mask = None
    if masked:
        padding = torch.ones(b, cap, dtype=torch.bool)
        padding[0, : past // 2] = False                                # a left-padded row
        mask = padding[:, None, None, : past + 1]
    before_k, before_v = kc.clone(), vc.clone()
    got = native_rows.attention_step(q, k, v, (kc, vc), past, mask, d ** -0.5)
    assert got is not None and got.shape == (b, h, 1, d)
    assert torch.equal(kc[:, :, past], k[:, :, 0]) and torch.equal(vc[:, :, past], v[:, :, 0])
    others = [i for i in range(cap) if i != past]
    assert torch.equal(kc[:, :, others], before_k[:, :, others]) and torch.equal(vc[:, :, others], before_v[:, :, others])
    torch.testing.assert_close(got, attention_reference(q, kc, vc, past + 1, mask, d ** -0.5), rtol=1e-5, atol=2e-6)


@needs_native
@pytest.mark.parametrize("window", [None, 1, 3, 8, 50])
@pytest.mark.parametrize("softcap", [None, 0.7, 30.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("biased", [None, "heads", "rows"])
def test_attention_step_sees_only_its_window_and_caps_its_scores_as_the_torch_ops(window, softcap, masked, biased):
    # the torch ops of a sliding-window, soft-capped attention over the cache (Gemma-2's eager form),
    # with a bias over the whole cache (T5's relative positions: [H, 1, cap] strided, or per row)
    b, h, hkv, d, past = 2, 4, 2, 8, 9
    g = torch.Generator().manual_seed(window or 0)
    kc, vc = torch.randn(b, hkv, past + 3, d, generator=g) * 3, torch.randn(b, hkv, past + 3, d, generator=g)
    q = torch.randn(b, h, 1, d, generator=g) * 3
    k, v = torch.randn(b, hkv, 1, d, generator=g), torch.randn(b, hkv, 1, d, generator=g)
    padding = torch.ones(b, past + 3, dtype=torch.bool)
    if masked:
        padding[0, :6] = False               # with window 3, row 0 sees only its last 3 keys, all real
    mask = padding[:, None, None, : past + 1] if masked else None
    bias = None
    if biased == "heads":
        bias = torch.randn(1, past + 3, h, generator=g).permute(2, 0, 1)       # an embedding's rows, transposed
    elif biased == "rows":
        bias = torch.randn(b, h, 1, past + 3, generator=g)
    got = native_rows.attention_step(q, k, v, (kc, vc), past, mask, 0.4, window, softcap, bias)
    keys = kc[:, :, : past + 1].repeat_interleave(h // hkv, dim=1)
    values = vc[:, :, : past + 1].repeat_interleave(h // hkv, dim=1)
    scores = q @ keys.transpose(-1, -2) * 0.4
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias[..., : past + 1]
    visible = padding[:, None, None, : past + 1].clone()
    if window:
        visible[..., : max(past + 1 - window, 0)] = False
    want = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1) @ values
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@needs_native
def test_attention_step_with_every_key_hidden_gives_zeros_not_nan():
    kc, vc = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    q, k, v = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    mask = torch.zeros(1, 1, 1, 3, dtype=torch.bool)
    got = native_rows.attention_step(q, k, v, (kc, vc), 2, mask, 0.3)
    assert torch.equal(got, torch.zeros(1, 1, 1, 8))


def test_attention_step_leaves_other_dtypes_and_masks_to_torch():
    kc = torch.randn(1, 2, 4, 8).half()
    q, k = torch.randn(1, 2, 1, 8).half(), torch.randn(1, 2, 1, 8).half()
    assert native_rows.attention_step(q, k, k, (kc, kc.clone()), 1, None, 0.3) is None
    kc = torch.randn(1, 2, 4, 8)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    float_mask = torch.zeros(1, 1, 1, 2)
    assert native_rows.attention_step(q, k, k, (kc, kc.clone()), 1, float_mask, 0.3) is None


@needs_native
def test_bf16_rms_norm_rounds_the_normalised_row_then_scales_like_the_torch_code():
    x = (torch.randn(3, 768) * 2).bfloat16()
    w = (1 + 0.1 * torch.randn(768)).bfloat16()
    got = native_rows.rms_norm(x, w, 1e-6)
    h = x.float()
    want = w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert got.dtype == torch.bfloat16
    # the sum of squares in another order may move a normalised value across a rounding boundary
    mismatch = (got != want).float().mean().item()
    assert mismatch < 0.01
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=0)


@needs_native
def test_bf16_rope_rounds_each_product_and_sum_like_torch_to_the_bit():
    x = torch.randn(2, 4, 3, 64).transpose(1, 2).bfloat16()       # [B, H=3, S=4, D]
    cos, sin = tables(2, 4, 64)
    cos, sin = cos.bfloat16(), sin.bfloat16()
    got = native_rows.rope(x, cos, sin)
    assert got is not None and torch.equal(got, rotate_half_reference(x, cos, sin))


@needs_native
def test_bf16_attention_step_equals_sdpa_in_bf16():
    g = torch.Generator().manual_seed(0)
    kc, vc = torch.randn(2, 4, 50, 64, generator=g).bfloat16(), torch.randn(2, 4, 50, 64, generator=g).bfloat16()
    q = torch.randn(2, 12, 1, 64, generator=g).bfloat16()
    k, v = torch.randn(2, 4, 1, 64, generator=g).bfloat16(), torch.randn(2, 4, 1, 64, generator=g).bfloat16()
    got = native_rows.attention_step(q, k, v, (kc, vc), 40, None, 0.125)
    assert got is not None and got.dtype == torch.bfloat16
    assert torch.equal(kc[:, :, 40], k[:, :, 0])
    want = attention_reference(q.float(), kc.float(), vc.float(), 41, None, 0.125)
    torch.testing.assert_close(got.float(), want, rtol=2 ** -7, atol=1e-3)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op, code", [(torch.add, 0), (torch.sub, 1), (torch.mul, 2), (torch.div, 3)])
def test_the_c_elementwise_ops_a_replayed_step_takes_give_atens_bits(dtype, op, code):
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-40, 3.4e38, -3.4e38, 1.0])
    a = torch.cat([torch.randn(1000, generator=g) * 10 ** torch.randint(-8, 8, (1000,), generator=g), special,
                   special.flip(0)]).to(dtype)
    b = torch.cat([torch.randn(1000, generator=g), special.flip(0), special]).to(dtype)
    out = torch.empty_like(a)
    lib = native.library()
    kernel = lib.gs_binary_f32 if dtype == torch.float32 else lib.gs_binary_bf16
    kernel(a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel(), code)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    want = op(a, b)
    same = (out.view(bits) == want.view(bits)) | (out.isnan() & want.isnan())
    assert bool(same.all()), (a[~same][:5], b[~same][:5], out[~same][:5], want[~same][:5])


# the C products' other code paths (AVX-512 without VNNI, AVX2, none): what a decode step of an fp32
# or bf16 model runs on such CPUs
@pytest.mark.parametrize("march", ["skylake-avx512", "x86-64-v3", "x86-64"])
def test_the_c_linears_other_code_paths_equal_f_linear(march, monkeypatch):
    monkeypatch.setenv(native.MARCH_VARIABLE, march)
    native.library.cache_clear()
    native.unavailable_reason.cache_clear()
    try:
        if not native.available():
            pytest.skip(native.unavailable_reason())
        g = torch.Generator().manual_seed(7)
        for rows in (1, 3, 8, 13):
            x, w, b = torch.randn(1, rows, 100, generator=g), torch.randn(37, 100, generator=g), torch.randn(37, generator=g)
            want = F.linear(x.double(), w.double()) + b.double()
            got = native_rows.linear(x, w, b, rows_up_to={torch.float32: 32})
            torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5, msg=f"{march} fp32 {rows}")
            got = native_rows.linear(x.bfloat16(), w.bfloat16(), b.bfloat16())
            want = (F.linear(x.bfloat16().double(), w.bfloat16().double()) + b.bfloat16().double()).float()
            assert bool(((got.float() - want).abs() <= want.abs() * 2 ** -7 + 1e-6).all()), (march, rows)
    finally:
        native.library.cache_clear()
        native.unavailable_reason.cache_clear()

@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op, code", [(torch.add, 0), (torch.sub, 1), (torch.mul, 2), (torch.div, 3)])
def test_the_c_broadcast_elementwise_ops_give_atens_bits(dtype, op, code):
    g = torch.Generator().manual_seed(code)
    kernel = getattr(native.library(), f"gs_binary_broadcast_{'f32' if dtype == torch.float32 else 'bf16'}")
    cases = [(torch.randn(1, 1, 1), torch.randn(32)),                                  # a rope table's angles
             (torch.randn(3, 1, 5), torch.randn(1, 4, 1)),
             (torch.randn(2, 3, 4, 5)[:, :, ::2], torch.randn(2, 1, 4, 1)[:, :, ::2]),          # strided both
             (torch.randn(6, 7).t(), torch.randn(7, 6))]                             # strided, no broadcast
    for a, b in cases:
        a, b = (a * 10 ** torch.randint(-6, 6, a.shape, generator=g)).to(dtype), b.to(dtype)
        want = op(a, b)
        out = torch.empty(want.shape, dtype=dtype)
        pad = 4 - out.dim()
        sizes = [1] * pad + list(out.shape)
        strides = [[0] * pad + list(t.expand(out.shape).stride()) for t in (a, b)]
        kernel(a.data_ptr(), b.data_ptr(), out.data_ptr(), code, *sizes, *strides[0], *strides[1])
        bits = torch.int32 if dtype == torch.float32 else torch.int16
        assert torch.equal(out.view(bits), want.contiguous().view(bits)), (a.shape, b.shape)


@needs_native
def test_the_c_concatenation_of_two_tensors_is_torch_cat():
    lib = native.library()
    for a, b, dim in [(torch.randn(1, 1, 32), torch.randn(1, 1, 32), -1), (torch.randn(2, 3, 4), torch.randn(2, 5, 4), 1),
                      (torch.randn(3, 4).bfloat16(), torch.randn(1, 4).bfloat16(), 0)]:
        want = torch.cat((a, b), dim)
        out = torch.empty_like(want)
        rows = want.shape[:dim % want.dim()].numel()
        lib.gs_concat2(a.data_ptr(), a.numel() // rows * a.element_size(), b.data_ptr(),
                       b.numel() // rows * b.element_size(), rows, out.data_ptr())
        assert torch.equal(out, want)

@needs_native
def test_the_c_copies_a_replayed_step_takes_give_atens_bits():
    lib = native.library()
    # an embedding's rows (any dtype: bytes), an index out of range refused before anything is read
    table = torch.randn(50, 24).bfloat16()
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    out = torch.empty(2, 3, 24, dtype=torch.bfloat16)
    assert lib.gs_gather_rows(table.data_ptr(), 50, 48, ids.data_ptr(), 6, out.data_ptr()) == 0
    assert torch.equal(out, F.embedding(ids, table))
    bad = torch.tensor([2, 50])
    assert lib.gs_gather_rows(table.data_ptr(), 50, 48, bad.data_ptr(), 2, out.data_ptr()) == 1
    assert lib.gs_gather_rows(table.data_ptr(), 50, 48, torch.tensor([-1]).data_ptr(), 1, out.data_ptr()) == 1
    # int64 -> fp32 rounds to nearest even, as aten's conversion
    big = torch.tensor([0, -1, 2 ** 24 + 1, 2 ** 24 + 3, -(2 ** 25 + 3), 2 ** 53 + 1, 2 ** 63 - 1, -(2 ** 63), 12345])
    floats = torch.empty(big.shape)
    lib.gs_i64_to_f32(big.data_ptr(), floats.data_ptr(), big.numel())
    assert torch.equal(floats.view(torch.int32), big.float().view(torch.int32))
    # zeros_like: zero bytes
    junk = torch.full((3, 5), float("nan"))
    lib.gs_zero_bytes(junk.data_ptr(), junk.numel() * 4)
    assert torch.equal(junk.view(torch.int32), torch.zeros(3, 5, dtype=torch.int32))

@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_c_path_is_within_a_few_ulp_of_torch_with_its_special_values(dtype):
    x = torch.cat([torch.randn(3000) * 6, torch.linspace(-100, 100, 2001),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 87.0, -87.0, 88.0, -88.0, 89.0, 200.0, -200.0,
                                 float("inf"), float("-inf"), float("nan"), 3e38, -3e38])]).to(dtype)
    got = silu(x)
    assert got.dtype == dtype and got.shape == x.shape
    want = F.silu(x)
    assert torch.equal(got.isnan(), want.isnan())
    finite = want.isfinite()
    assert torch.equal(got[~finite & ~want.isnan()], want[~finite & ~want.isnan()])      # +-inf as torch
    if dtype == torch.float32:
        torch.testing.assert_close(got[finite], want[finite], rtol=4e-7, atol=1e-36)
    else:       # the fp32 value rounded once: at most one bf16 step from torch's rounding of its own
        torch.testing.assert_close(got[finite].float(), want[finite].float(), rtol=2 ** -8, atol=1e-36)
    assert native_rows.silu(x) is not None                      # the C path took it


@needs_native
def test_silu_leaves_autograd_and_large_tensors_to_torch():
    x = torch.randn(64, requires_grad=True)
    assert native_rows.silu(x) is None
    silu(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.sigmoid(x.detach()) * (1 + x.detach() * (1 - torch.sigmoid(x.detach()))))
    assert native_rows.silu(torch.randn(1 << 17)) is None
    assert native_rows.silu(torch.randn(8, 8).t()) is None      # not contiguous



@needs_native
def test_the_c_argmax_picks_what_torch_picks_ties_nans_and_infinities_included():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 32000, generator=g)
    x[1, 5], x[1, 31000] = float("nan"), float("nan")          # the first NaN
    x[2] = 1.0
    x[2, 30001], x[2, 30007] = 2.0, 2.0                          # the first of tied largest values
    x[3] = float("-inf")                                         # all -inf: 0
    x[4, 17], x[4, 18] = float("inf"), float("inf")
    x[5, -1] = 100.0                                             # the last position
    x[6, 0] = float("nan")
    assert torch.equal(native_rows.argmax(x), x.argmax(dim=-1))
    assert native_rows.argmax(x.t()) is None and native_rows.argmax(x.double()) is None
    assert native_rows.argmax(torch.empty(2, 0)) is None

@needs_native
@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 5, 60), (7, 1)])
def test_a_routers_softmax_top_k_and_sums_match_torchs(shape):
    g = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(shape, generator=g) * 4
    torch.testing.assert_close(ops.softmax(x, -1), torch.softmax(x, -1), rtol=2e-6, atol=1e-7)
    for k in {1, min(2, shape[-1]), shape[-1]}:
        values, indices = ops.topk(x, k)
        want = torch.topk(x, k)
        assert torch.equal(values, want.values) and torch.equal(indices, want.indices)
    for dim in range(-len(shape), len(shape)):
        for keep in (False, True):
            torch.testing.assert_close(ops.reduce_sum(x, dim, keepdim=keep), x.double().sum(dim, keepdim=keep).float())


@needs_native
def test_the_routers_c_ops_treat_special_values_as_torch():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[0.5, -inf, 2.0, -inf], [1.0, nan, 0.0, 3.0], [-inf] * 4, [1.0, inf, 0.0, 2.0]])
    got, want = ops.softmax(x, -1), torch.softmax(x, -1)
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got[0], want[0], rtol=2e-6, atol=1e-7)          # masked entries are exact zeros
    ties = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [nan, 1.0, nan, 5.0, 0.0]])
    values, indices = ops.topk(ties, 3)
    # equal values in index order (an order torch leaves open), a NaN above every number
    assert indices.tolist() == [[1, 2, 4], [0, 2, 3]]
    assert values[0].tolist() == [3.0, 3.0, 3.0] and values[1, :2].isnan().all() and values[1, 2] == 5.0


def test_the_routers_ops_leave_what_the_c_loops_do_not_take_to_torch():
    g = torch.Generator().manual_seed(2)
    for x in (torch.randn(4, 9, generator=g).bfloat16(), torch.randn(300, 300, generator=g),
              torch.randn(9, 4, generator=g).t(), torch.randn(4, 9, generator=g).requires_grad_()):
        assert torch.equal(ops.softmax(x, -1), torch.softmax(x, -1))
        assert torch.equal(ops.reduce_sum(x, 0), x.sum(0))
        assert all(torch.equal(a, b) for a, b in zip(ops.topk(x, 2), torch.topk(x, 2)))
    x = torch.randn(4, 9, generator=g)
    assert torch.equal(ops.topk(x, 2, largest=False).indices, torch.topk(x, 2, largest=False).indices)
    assert torch.equal(ops.softmax(x, 0), torch.softmax(x, 0))
