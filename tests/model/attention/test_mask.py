"""The shared mask rule (lr_jax/model/attention/mask.py) against a naive loop over the DESIGN.md rule."""

import numpy as np

from lr_jax.model.attention.mask import TokenInfo, allowed


def _naive(pos, seg, br):
    s = len(pos)
    out = np.zeros((s, s), bool)
    for i in range(s):
        for j in range(s):
            out[i, j] = seg[i] == seg[j] and pos[j] <= pos[i] and (br[j] == 0 or br[j] == br[i])
    return out


def test_shared_prefix_row_matches_naive_rule():
    # [p0 p1 p2 | c0 c1 | r0 r1 r2] then a second packed pair [p0 p1 | c0 | r0] then padding.
    pos = [0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2, 2, 0, 0]
    seg = [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]
    br = [0, 0, 0, 1, 1, 2, 2, 2, 0, 0, 1, 2, 0, 0]
    info = TokenInfo.build(1, len(pos), positions=np.array([pos]), segment_ids=np.array([seg]),
                           branch_ids=np.array([br]))
    got = np.asarray(allowed(info, info))[0]
    np.testing.assert_array_equal(got, _naive(pos, seg, br))
    # The property the DPO packing relies on: rejected tokens never see chosen tokens and vice versa.
    chosen = [i for i in range(len(br)) if br[i] == 1 and seg[i] == 1]
    rejected = [i for i in range(len(br)) if br[i] == 2 and seg[i] == 1]
    assert not got[np.ix_(rejected, chosen)].any()
    assert not got[np.ix_(chosen, rejected)].any()
    # ...while both see the whole prompt of their own segment and nothing of the other pair.
    assert got[np.ix_(rejected, [0, 1, 2])].all()
    assert not got[np.ix_(rejected, [8, 9, 10, 11])].any()


def test_causal_default_is_lower_triangular():
    info = TokenInfo.causal(2, 5)
    got = np.asarray(allowed(info, info))
    np.testing.assert_array_equal(got, np.broadcast_to(np.tril(np.ones((5, 5), bool)), (2, 5, 5)))
