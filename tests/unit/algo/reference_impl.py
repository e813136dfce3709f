"""A deliberately simple, loop-based re-implementation of the PRIME maths (spec 2-6).

Plain Python floats and lists, one row and one token at a time, written from the spec's
prose and not from prime_mcore.algo, so that a shared mistake is unlikely. Inputs are
nested lists; lengths L_i give the valid prefix of each row (C2: EOS included).
"""

from __future__ import annotations

import math


def q_rows(lp, lr, lengths):
    return [[lp[i][t] - lr[i][t] for t in range(lengths[i])] for i in range(len(lengths))]


def process_rewards(lp, lr, lengths, beta, convention, granularity, norm, width):
    q = q_rows(lp, lr, lengths)
    out = [[0.0] * width for _ in lengths]
    for i, row in enumerate(q):
        n = len(row)
        if n == 0:
            continue
        if granularity == "token":
            for t in range(n):
                if convention == "orig":
                    out[i][t] = row[t]
                elif t <= n - 2:  # verl: EOS gets nothing
                    out[i][t] = beta * row[t]
        else:
            total = sum(row)
            out[i][n - 1] = total if convention == "orig" else beta * total
    if norm == "batch_norm":
        biggest = 0.0
        for row in out:
            for t in range(width):
                biggest = max(biggest, abs(sum(row[t:])))
        d = biggest + 1e-6
        out = [[v / d for v in row] for row in out]
    return out


def prm_ce_loss(lp, lr, lengths, scores, beta):
    total = 0.0
    for i, row in enumerate(q_rows(lp, lr, lengths)):
        z = beta * sum(row)
        p = 1.0 / (1.0 + math.exp(-z))
        a = scores[i]
        total += -(a * math.log(p) + (1 - a) * math.log(1 - p))
    return total / len(lengths)


def _rloo_dense(x, lengths, k):
    """Masked RLOO, dense mask (all valid tokens)."""
    out = [[0.0] * len(r) for r in x]
    for g in range(0, len(lengths), k):
        means = []
        for j in range(g, g + k):
            n = lengths[j]
            means.append(sum(x[j][:n]) / n if n else 0.0)
        b = sum(means) / (k - 1)
        for i in range(g, g + k):
            for t in range(lengths[i]):
                out[i][t] = x[i][t] * k / (k - 1) - b
    return out


def rloo_advantages(rm, scores, lengths, k, convention, rm_coef, gt_coef, width):
    rm_coef = rm_coef if rm_coef is not None else (1.0 if convention == "orig" else 5.0)
    gt_coef = gt_coef if gt_coef is not None else (1.0 if convention == "orig" else 5.0)
    f = [[0.0] * width for _ in lengths]
    if rm is not None and rm_coef != 0:
        r = _rloo_dense(rm, lengths, k)
        for i in range(len(lengths)):
            for t in range(lengths[i]):
                f[i][t] += rm_coef * r[i][t]
    if gt_coef != 0:
        for g in range(0, len(lengths), k):
            members = [j for j in range(g, g + k)]
            total = sum(scores[j] for j in members if lengths[j] > 0)
            for i in members:
                if lengths[i] == 0:
                    continue
                loo = scores[i] * k / (k - 1) - total / (k - 1)
                f[i][lengths[i] - 1] += gt_coef * loo
    returns = [[sum(f[i][t:lengths[i]]) if t < lengths[i] else 0.0 for t in range(width)]
               for i in range(len(lengths))]
    vals = [returns[i][t] for i in range(len(lengths)) for t in range(lengths[i])]
    n = len(vals)
    eps = 0.0 if convention == "orig" else 1e-8
    mu = sum(vals) / (n + eps)
    var = sum((v - mu) ** 2 for v in vals) / (n + eps) * n / (n - 1)
    adv = [[(returns[i][t] - mu) / math.sqrt(var + 1e-8) if t < lengths[i] else 0.0
            for t in range(width)] for i in range(len(lengths))]
    return adv, returns


def ppo_loss(lp, lp_old, adv, lengths, clip_eps, dual_clip, agg):
    per_seq, all_tokens, clipped, kl = [], [], 0, 0.0
    for i, n in enumerate(lengths):
        seq = []
        for t in range(n):
            ratio = math.exp(lp[i][t] - lp_old[i][t])
            a = adv[i][t]
            u = -a * ratio
            c = -a * min(max(ratio, 1 - clip_eps), 1 + clip_eps)
            loss = max(u, c)
            clipped += c > u
            if dual_clip is not None and a < 0:
                loss = min(loss, -a * dual_clip)
            kl += lp_old[i][t] - lp[i][t]
            seq.append(loss)
            all_tokens.append(loss)
        if n:
            per_seq.append(sum(seq) / n)
    if agg == "token-mean":
        value = sum(all_tokens) / len(all_tokens)
    else:
        value = sum(per_seq) / len(per_seq)
    return value, clipped / len(all_tokens), kl / len(all_tokens)


def accuracy_filter(scores, k, low, high):
    keep = []
    for g in range(0, len(scores), k):
        from fractions import Fraction

        acc = sum(Fraction(s).limit_denominator(10**6) for s in scores[g:g + k]) / k
        keep.append(Fraction(low).limit_denominator(10**6) <= acc
                    <= Fraction(high).limit_denominator(10**6))
    return keep


def dpo_accuracy(rm, scores, lengths, k):
    accs = []
    for g in range(0, len(lengths), k):
        num = den = 0.0
        for i in range(g, g + k):
            for j in range(i + 1, g + k):
                w = abs(scores[i] - scores[j])
                xi, xj = sum(rm[i][:lengths[i]]), sum(rm[j][:lengths[j]])
                num += w * (((xi - xj) > 0) == ((scores[i] - scores[j]) > 0))
                den += w
        accs.append(num / den if den > 0 else 0.5)
    return sum(accs) / len(accs)
