"""lr_jax.losses vs. float64 NumPy versions of the published formulas and a naive full-logits path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.training import losses

jax.config.update("jax_enable_x64", False)


def _logsig(x):
    return -np.logaddexp(0.0, -x)


def _np_dpo(pc, pr, rc, rr, beta, kind, eps):
    h = (pc - rc) - (pr - rr)
    if kind == "sigmoid":  # Rafailov et al. 2023; cDPO label smoothing
        loss = -(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h)
    elif kind == "robust":  # Chowdhury et al. 2024, eq. for the unbiased loss
        loss = (-(1 - eps) * _logsig(beta * h) + eps * _logsig(-beta * h)) / (1 - 2 * eps)
    elif kind == "ipo":  # Azar et al. 2023
        loss = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        loss = np.maximum(0.0, 1 - beta * h)
    return loss, beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize(
    ("kind", "eps"), [("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.1), ("robust", 0.3), ("ipo", 0.0),
                      ("hinge", 0.0)]
)
def test_dpo_variants_match_numpy(kind, eps):
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(-50, 10, size=(64,)) for _ in range(4))
    beta = 0.15
    got = losses.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=kind, label_smoothing=eps)
    want = _np_dpo(pc, pr, rc, rr, beta, kind, eps)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=2e-5, atol=2e-5)
    # Gradient w.r.t. the chosen policy log-prob vs. a float64 central difference of the NumPy formula.
    grad = jax.grad(lambda x: losses.dpo_loss(x, pr, rc, rr, beta=beta, loss_type=kind,
                                              label_smoothing=eps)[0].sum())(jnp.asarray(pc, jnp.float32))
    d = 1e-4
    lo = lambda x: _np_dpo(x, pr, rc, rr, beta, kind, eps)[0]
    fd = (lo(pc + d) - lo(pc - d)) / (2 * d)
    np.testing.assert_allclose(np.asarray(grad, np.float64), fd, rtol=1e-3, atol=1e-4)


def test_label_smoothing_changes_sigmoid_and_beta_applied_once():
    pc, pr, rc, rr = (jnp.array([x]) for x in (-10.0, -14.0, -12.0, -12.0))
    plain = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)[0]
    smooth = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)[0]
    assert not np.allclose(plain, smooth)
    # h = 2 - (-2) = 4, beta*h = 2: loss = -log sigmoid(2); a doubled beta would give -log sigmoid(4).
    np.testing.assert_allclose(plain, -_logsig(2.0), rtol=1e-6)


@pytest.mark.parametrize(("kwargs", "msg"), [
    ({"loss_type": "kto"}, "unknown DPO loss_type"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "not defined"),
    ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"beta": 0.0}, "beta"),
])
def test_dpo_bad_options_raise(kwargs, msg):
    x = jnp.zeros((2,))
    kwargs = {"beta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=msg):
        losses.dpo_loss(x, x, x, x, **kwargs)


def _naive_token_logps(hidden, unembed, targets):
    logits = np.einsum("bsd,dv->bsv", np.asarray(hidden, np.float64), np.asarray(unembed, np.float64))
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
def test_chunked_token_logprobs_values_and_grads(chunk):
    rng = np.random.default_rng(1)
    b, s, d, v = 2, 13, 8, 37
    hidden = jnp.asarray(rng.normal(size=(b, s, d)), jnp.float32)
    unembed = jnp.asarray(rng.normal(size=(d, v)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, s)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(b, s)), jnp.float32)
    got = losses.token_logprobs(hidden, unembed, targets, chunk_size=chunk)
    np.testing.assert_allclose(np.asarray(got), _naive_token_logps(hidden, unembed, targets), rtol=1e-5,
                               atol=1e-5)

    def naive(h, u):
        lp = jax.nn.log_softmax(jnp.einsum("bsd,dv->bsv", h, u), -1)
        return jnp.sum(jnp.take_along_axis(lp, targets[..., None], -1)[..., 0] * weights)

    chunked = lambda h, u: jnp.sum(losses.token_logprobs(h, u, targets, chunk_size=chunk) * weights)
    g_naive = jax.grad(naive, argnums=(0, 1))(hidden, unembed)
    g_chunk = jax.grad(chunked, argnums=(0, 1))(hidden, unembed)
    for a, w in zip(g_chunk, g_naive, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_chunked_logits_never_full_size():
    """The compiled backward pass holds no [seq, vocab] buffer: temp memory stays near one chunk's logits."""
    b, s, d, v, chunk = 1, 512, 16, 4096, 64
    h = jnp.ones((b, s, d), jnp.float32)
    u = jnp.ones((d, v), jnp.float32)
    t = jnp.zeros((b, s), jnp.int32)
    f = jax.jit(jax.grad(lambda h, u: losses.token_logprobs(h, u, t, chunk_size=chunk).sum(), argnums=(0, 1)))
    mem = f.lower(h, u).compile().memory_analysis()
    full_logits = b * s * v * 4
    assert mem.temp_size_in_bytes < full_logits / 2, (mem.temp_size_in_bytes, full_logits)


def _np_segments(tlp, mask, seg, br, p):
    b = tlp.shape[0]
    ch, rj, nc, nr = (np.zeros((b, p)) for _ in range(4))
    for i in range(b):
        for j in range(tlp.shape[1]):
            if seg[i, j] == 0 or not mask[i, j]:
                continue
            k = seg[i, j] - 1
            if br[i, j] == 1:
                ch[i, k] += tlp[i, j]
                nc[i, k] += 1
            elif br[i, j] == 2:
                rj[i, k] += tlp[i, j]
                nr[i, k] += 1
    return ch, rj, (nc > 0) & (nr > 0), nc


def _packed_example():
    # row 0: two pairs then padding; row 1: one pair, segment 2 absent (invalid).
    seg = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
    br = np.array([[0, 0, 1, 1, 2, 2, 0, 1, 2, 2, 0, 0], [0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 0, 0]])
    mask = ((br > 0) & (seg > 0)).astype(np.int32)
    mask[1, 3] = 0  # the duplicated prompt token: not a counted target
    tlp = np.random.default_rng(2).normal(-2, 1, size=seg.shape)
    return tlp, mask, seg, br


def test_segment_logps_matches_loop():
    tlp, mask, seg, br = _packed_example()
    ch, rj, valid = losses.segment_logps(jnp.asarray(tlp, jnp.float32), mask, seg, br, 2)
    want = _np_segments(tlp, mask, seg, br, 2)
    np.testing.assert_allclose(np.asarray(ch), want[0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rj), want[1], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(valid), want[2])
    assert np.asarray(valid).tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_sft_loss_normalisations(norm):
    tlp, mask, seg, br = _packed_example()
    got = losses.sft_loss(jnp.asarray(tlp, jnp.float32), mask, br, seg, normalization=norm, num_segments=2)
    ch, _, _, nc = _np_segments(tlp, mask, seg, br, 2)
    if norm == "token":
        want = -ch.sum() / nc.sum()
    else:
        has = nc > 0
        want = np.mean((-ch[has]) / nc[has])
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown SFT normalization"):
        losses.sft_loss(jnp.asarray(tlp), mask, br, seg, normalization="tokens")


def test_reward_metrics():
    c = jnp.array([[1.0, 0.0], [2.0, 9.0]])
    r = jnp.array([[0.5, 1.0], [3.0, -9.0]])
    valid = jnp.array([[True, True], [True, False]])
    m = losses.reward_metrics(c, r, valid)
    np.testing.assert_allclose(float(m.accuracy), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m.margin), (0.5 - 1.0 - 1.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m.chosen_reward), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(m.rejected_reward), 1.5, rtol=1e-6)
