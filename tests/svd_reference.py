"""Independent numpy transcriptions of the authors' formulas (docs/method.md sections 1, 3, 4),
written loop by loop from docs/method.md so that the TensorFlow code can be checked
against something it does not share."""
import numpy as np


def nan_to_zero(x):
    x = np.array(x, dtype=np.float64)
    x[~np.isfinite(x)] = 0.0
    return x


def l2_normalize(x, axis):
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))


def original_gradient(s, u, v, dv):
    """Spec section 3, one sample at a time."""
    out = []
    for b in range(s.shape[0]):
        sb, ub, vb, dvb = s[b], u[b], v[b], dv[b]
        k = sb.size
        kmat = np.zeros((k, k))
        for i in range(k):
            for j in range(k):
                if i != j:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        kmat[i, j] = 1.0 / (sb[i] ** 2 - sb[j] ** 2)
        kt = nan_to_zero(kmat.T)
        big_s = np.diag(sb)
        m, n = ub.shape[0], vb.shape[0]
        if n <= m:
            a = kt * (vb.T @ dvb)
            out.append(2 * ub @ big_s @ (a + a.T) @ vb.T)
        else:
            left, right = vb, ub
            d = dvb @ np.diag(1.0 / (sb + 1e-8))
            a = kt * (d.T @ left @ big_s)
            g = (d - left @ (np.diag(np.diag(left.T @ d)) + 2 * big_s @ (a + a.T))) @ right.T
            out.append(g.T)
    return np.stack(out)


def eccv_gradient(s, u, v, dv):
    """Spec section 4, one sample at a time."""
    out = []
    for b in range(s.shape[0]):
        k = min(5, s.shape[1])
        sb, ub, vb, dvb = s[b, :k], u[b, :, :k], v[b, :, :k], dv[b, :, :k]
        with np.errstate(divide="ignore", invalid="ignore"):
            kmat = 1.0 / (sb[:, None] ** 2 - sb[None, :] ** 2)
        kmat = kmat if np.all(np.isfinite(kmat)) else np.zeros_like(kmat)
        np.fill_diagonal(kmat, 0.0)
        big_s = np.diag(sb)
        if ub.shape[0] < vb.shape[0]:
            with np.errstate(divide="ignore", invalid="ignore"):
                d = dvb @ np.diag(1.0 / sb)
            vs = vb @ big_s
            a = kmat * (vs.T @ d)
            g = ub @ d.T - ub @ np.diag(np.diag(d.T @ vb)) @ vb.T - 2 * ub @ ((a + a.T) / 2) @ vs.T
        else:
            a = kmat.T * (vb.T @ dvb)
            g = 2 * ub @ big_s @ ((a + a.T) / 2) @ vb.T
        out.append(g if np.all(np.isfinite(g)) else np.zeros_like(g))
    return np.stack(out)


def refined_loss(student, teacher, k=1, extra=3, width=8.0):
    """Spec section 1 from per-tap decompositions: student/teacher are lists of (s, v)."""
    total, previous = 0.0, None
    for (s_s, s_v), (t_s, t_v) in zip(student, teacher):
        n_t, n_s = min(k, t_s.shape[1]), min(k + extra, s_s.shape[1])
        t_s = l2_normalize(nan_to_zero(t_s)[:, :n_t], 1)
        t_v = l2_normalize(nan_to_zero(t_v)[:, :, :n_t], 1)
        s_v = l2_normalize(nan_to_zero(s_v)[:, :, :n_s], 1)
        batch, depth = s_v.shape[0], s_v.shape[1]
        aligned = np.zeros((batch, depth, n_t))
        for b in range(batch):
            cos = s_v[b].T @ t_v[b]
            for t in range(n_t):
                for j in range(n_s):
                    if abs(cos[j, t]) == np.max(np.abs(cos[:, t])):
                        aligned[b, :, t] += np.sign(cos[j, t]) * s_v[b, :, j]
        s_w = aligned * t_s[:, None, :]
        t_w = t_v * t_s[:, None, :]
        if previous is not None:
            p_s, p_t = previous
            for b in range(batch):
                for c in range(n_t):
                    r_s = np.exp(-(s_w[b, :, None, c] - p_s[b, None, :, c]) ** 2 / width)
                    r_t = np.exp(-(t_w[b, :, None, c] - p_t[b, None, :, c]) ** 2 / width)
                    total += np.sum(nan_to_zero((r_s - r_t) ** 2))
        previous = (s_w, t_w)
    return total


def eccv_loss(student, teacher, num_dfv=1, width=8.0):
    """Spec section 4 from per-tap kept components: student lists v, teacher lists (s, v)."""
    def align(x, y, ys, n):
        y, ys = y[:, :, :n], ys[:, :n]
        out_x = np.zeros((x.shape[0], x.shape[1], n))
        out_y = np.zeros_like(out_x)
        for b in range(x.shape[0]):
            cos = x[b].T @ y[b]
            w = ys[b] / np.sqrt(np.sum(ys[b] ** 2))
            for t in range(n):
                out_x[b, :, t] = x[b, :, np.argmax(np.abs(cos[:, t]))] * w[t]
                out_y[b, :, t] = y[b, :, t] * w[t]
                if out_x[b, :, t] @ out_y[b, :, t] < 0:
                    out_y[b, :, t] *= -1
        return out_x, out_y

    total, n = 0.0, num_dfv
    for top in range(len(student) - 1):
        bottom = top + 1
        n = min(n, student[bottom].shape[2], teacher[bottom][1].shape[2])
        st, tt = align(student[top], teacher[top][1], teacher[top][0], n)
        sb, tb = align(student[bottom], teacher[bottom][1], teacher[bottom][0], n)
        fin_top = np.isfinite(st) & np.isfinite(tt)
        fin_bottom = np.isfinite(sb) & np.isfinite(tb)
        st, tt = np.where(fin_top, st, 0.0), np.where(fin_top, tt, 0.0)
        sb, tb = np.where(fin_bottom, sb, 0.0), np.where(fin_bottom, tb, 0.0)
        for b in range(st.shape[0]):
            for c in range(n):
                r_s = np.exp(-(st[b, :, None, c] - sb[b, None, :, c]) ** 2 / width)
                r_t = np.exp(-(tt[b, :, None, c] - tb[b, None, :, c]) ** 2 / width)
                total += 0.5 * np.sum((r_s - r_t) ** 2) * np.sqrt(n)
    return total
