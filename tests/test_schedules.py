import math

import pytest

from cvae.config import preset
from cvae.schedules import kl_beta, teacher_forcing_ratio


def cfg(**kw):
    base = dict(epochs=40, epoch_size=10, beta_min=0.0, beta_max=1.0, kl_anneal_ratio=0.5)
    return preset("tiny", **{**base, **kw})


def betas(c, unit_steps=False):
    if unit_steps:
        return [kl_beta(c, e, s) for e in range(c.epochs) for s in range(c.epoch_size)]
    return [kl_beta(c, e) for e in range(c.epochs)]


def count_cycles(values):
    """Cycles = number of times the schedule restarts (drops back) + 1."""
    return 1 + sum(1 for a, b in zip(values, values[1:]) if b < a)


@pytest.mark.parametrize("mode", ["cyclical", "cyclical-sigmoid"])
@pytest.mark.parametrize("cycles", [1, 2, 3, 4])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_cyclical_endpoints_monotone_ramps_and_cycle_count(mode, cycles, ratio):
    c = cfg(kl_anneal=mode, kl_anneal_cycle=cycles, kl_anneal_ratio=ratio, epochs=48)
    v = betas(c)
    assert v[0] == pytest.approx(0.0, abs=0.003)
    assert min(v) >= 0.0 and max(v) <= 1.0
    assert count_cycles(v) == cycles
    period = c.epochs // cycles
    for k in range(cycles):
        cycle = v[k * period:(k + 1) * period]
        assert cycle[0] == pytest.approx(0.0, abs=0.003)  # every cycle restarts at beta_min
        assert all(b >= a for a, b in zip(cycle, cycle[1:]))  # monotone within a cycle
        if ratio < 1:
            assert cycle[-1] == 1.0  # after the ramp: held at beta_max
            held = sum(1 for b in cycle if b == 1.0)
            assert held == pytest.approx(period * (1 - ratio), abs=1)


def test_cyclical_matches_frange_cycle_linear():
    """Fu et al. 2019 reference: beta ramps linearly over ratio * period, then holds."""
    c = cfg(kl_anneal="cyclical", kl_anneal_cycle=4, kl_anneal_ratio=0.5, epochs=40)
    ref = fu_frange_cycle_linear(40, 0.0, 1.0, 4, 0.5)
    assert betas(c) == pytest.approx(ref, abs=1e-9)


def test_monotonic_is_one_ramp_then_constant():
    c = cfg(kl_anneal="monotonic", kl_anneal_ratio=0.25, epochs=40)
    v = betas(c)
    assert count_cycles(v) == 1 and v[0] == 0.0 and v[-1] == 1.0
    assert all(b >= a for a, b in zip(v, v[1:]))
    assert next(i for i, b in enumerate(v) if b > 1 - 1e-9) == 10  # 10 steps of 0.1 (Fu's sum)


def test_none_is_constant_and_sigmoid_is_s_shaped():
    assert set(betas(cfg(kl_anneal="none", beta_max=0.3))) == {0.3}
    v = betas(cfg(kl_anneal="cyclical-sigmoid", kl_anneal_cycle=1, kl_anneal_ratio=1.0, epochs=40))
    assert v[20] == pytest.approx(0.5, abs=1e-6)  # midpoint of the sigmoid ramp
    assert v[5] < 5 / 40 and v[35] > 35 / 40  # slow start, fast middle, slow end


def test_step_unit_schedules_within_epochs():
    c = cfg(kl_anneal="cyclical", kl_anneal_cycle=2, kl_anneal_unit="step", epochs=4, epoch_size=10)
    v = betas(c, unit_steps=True)
    assert len(v) == 40 and count_cycles(v) == 2
    assert v[1] > v[0] and v[9] > v[1]  # beta changes within an epoch


def test_beta_range_is_configurable():
    v = betas(cfg(kl_anneal="cyclical", kl_anneal_cycle=2, beta_min=1e-4, beta_max=1e-2))
    assert min(v) == pytest.approx(1e-4) and max(v) == pytest.approx(1e-2)


def test_teacher_forcing_holds_then_decays_linearly_to_lower_bound():
    c = cfg(tfr=1.0, tfr_start_decay_epoch=10, tfr_lower_bound=0.2, epochs=30)
    v = [teacher_forcing_ratio(c, e) for e in range(30)]
    assert v[:10] == [1.0] * 10
    assert all(b < a for a, b in zip(v[9:], v[10:]))  # strictly decaying after the start
    assert v[-1] == pytest.approx(0.2)
    assert min(v) >= 0.2


def test_teacher_forcing_decay_step_and_clip():
    c = cfg(tfr=1.0, tfr_start_decay_epoch=2, tfr_decay_step=0.3, tfr_lower_bound=0.1, epochs=10)
    v = [teacher_forcing_ratio(c, e) for e in range(10)]
    assert v[:2] == [1.0, 1.0]
    assert v[2] == pytest.approx(0.7) and v[3] == pytest.approx(0.4)
    assert v[4:] == pytest.approx([0.1] * 6)


def test_decay_from_epoch_zero_starts_decaying_immediately():
    c = cfg(tfr_start_decay_epoch=0, epochs=10, tfr_lower_bound=0.0)
    assert teacher_forcing_ratio(c, 0) < 1.0
    assert math.isclose(teacher_forcing_ratio(c, 9), 0.0)


# Fu et al.'s published code (haofuml/cyclical_annealing), written out here as the reference.
def fu_frange_cycle_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    L = [stop] * n_iter
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            L[int(i + c * period)] = v
            v += step
            i += 1
    return L


def fu_frange_cycle_sigmoid(start, stop, n_epoch, n_cycle=4, ratio=0.5):
    L = [1.0] * n_epoch
    period = n_epoch / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_epoch:  # bound check as in the linear one
            L[int(i + c * period)] = 1.0 / (1.0 + math.exp(-(v * 12. - 6.)))
            v += step
            i += 1
    return L


NON_DIVISIBLE = [(6, 4), (200, 3), (300, 7), (200, 6), (10, 3), (7, 2)]


def test_six_epochs_four_cycles_is_fus_array():
    c = cfg(kl_anneal="cyclical", kl_anneal_cycle=4, kl_anneal_ratio=0.5, epochs=6)
    assert betas(c) == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("n,cycles", NON_DIVISIBLE)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 1.0])
@pytest.mark.parametrize("beta", [(0.0, 1.0), (1e-4, 1e-3)])
def test_cyclical_and_monotonic_equal_fus_arrays_per_epoch(n, cycles, ratio, beta):
    lo, hi = beta
    common = dict(epochs=n, kl_anneal_ratio=ratio, beta_min=lo, beta_max=hi)
    cyc = cfg(kl_anneal="cyclical", kl_anneal_cycle=cycles, **common)
    assert betas(cyc) == fu_frange_cycle_linear(n, lo, hi, cycles, ratio)
    mono = cfg(kl_anneal="monotonic", **common)
    assert betas(mono) == fu_frange_cycle_linear(n, lo, hi, 1, ratio)
    sig = cfg(kl_anneal="cyclical-sigmoid", kl_anneal_cycle=cycles, **common)
    ref = [lo + (hi - lo) * v for v in fu_frange_cycle_sigmoid(0.0, 1.0, n, cycles, ratio)]
    assert betas(sig) == pytest.approx(ref, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("epochs,epoch_size,cycles", [(6, 20, 4), (20, 15, 3), (7, 30, 7)])
@pytest.mark.parametrize("ratio", [0.3, 1.0])
def test_step_unit_equals_fus_array_over_all_steps(epochs, epoch_size, cycles, ratio):
    n = epochs * epoch_size
    c = cfg(kl_anneal="cyclical", kl_anneal_cycle=cycles, kl_anneal_ratio=ratio,
            kl_anneal_unit="step", epochs=epochs, epoch_size=epoch_size)
    assert betas(c, unit_steps=True) == fu_frange_cycle_linear(n, 0.0, 1.0, cycles, ratio)
    m = cfg(kl_anneal="monotonic", kl_anneal_ratio=ratio, kl_anneal_unit="step",
            epochs=epochs, epoch_size=epoch_size)
    assert betas(m, unit_steps=True) == fu_frange_cycle_linear(n, 0.0, 1.0, 1, ratio)
