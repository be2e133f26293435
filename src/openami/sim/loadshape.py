"""Deterministic 15-minute load models: residential, commercial, rooftop PV and EV charging.

A model is a pure function of (its parameters, interval end): the same interval always gives the
same energy, whichever process asks and in whatever order, so a simulated meter can generate its
load profile on demand and stay consistent with its registers. Per-meter shapes (peak times, base
load, scale) are precomputed once into two 96-slot tables (weekday, weekend); the hot path is
integer hashing and a few ``math`` calls, no ``datetime``.

Conventions: energies are Wh per 15-minute interval, ``interval_end`` is a UTC epoch second (the
interval covers ``[end - 900, end)``), local time is UTC plus a fixed ``utc_offset_s`` (no daylight
saving), the calendar year is approximated as 365.2425 days from the epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from openami.domain.meters import CustomerClass

__all__ = [
    "INTERVAL_S",
    "SLOTS_PER_DAY",
    "LoadModel",
    "LoadParams",
    "draw_params",
    "unit_hash",
]

INTERVAL_S = 900
SLOTS_PER_DAY = 96
DAY_S = 86_400
YEAR_DAYS = 365.2425
LATITUDE_DEG = 48.0  # one latitude for the whole synthetic grid (central Europe)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_INV_2_53 = 1.0 / (1 << 53)
_TWO_PI = 2.0 * math.pi

# Prevalence and sizes of the optional parts, per customer class.
PV_SHARE = {CustomerClass.RESIDENTIAL: 0.12, CustomerClass.COMMERCIAL: 0.25}
EV_SHARE = {CustomerClass.RESIDENTIAL: 0.10, CustomerClass.COMMERCIAL: 0.0}
EV_CHARGER_KW = (3.7, 7.4, 11.0)

_SPIKE_P = 0.04  # chance that an interval holds an appliance burst (kettle, oven, washer heater)
_SPIKE_WH = 250  # 1 kW for the whole interval
_PV_PERFORMANCE = 0.85  # inverter and wiring losses
_EV_SALT = 0x45560000  # separate hash streams for the EV sessions and the weather
_WEATHER_SALT = 0x57454154
_SIN_LAT = math.sin(math.radians(LATITUDE_DEG))
_COS_LAT = math.cos(math.radians(LATITUDE_DEG))


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit integer hash."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def unit_hash(seed: int, n: int) -> float:
    """A uniform float in [0, 1) that depends only on (seed, n)."""
    return (_mix64(_mix64(seed) + n * _GOLDEN) >> 11) * _INV_2_53


@dataclass(frozen=True, slots=True)
class LoadParams:
    """Everything that defines one meter's load; small, picklable and JSON-friendly.

    ``annual_kwh`` is the consumption before PV and EV; ``pv_kwp`` is the rooftop PV peak power (0 =
    none); ``ev_kw`` the EV charger power (0 = none); ``weather_seed`` is shared by a whole fleet so
    that all PV roofs see the same cloudy days.
    """

    seed: int
    customer_class: CustomerClass
    annual_kwh: float
    pv_kwp: float = 0.0
    ev_kw: float = 0.0
    utc_offset_s: int = 0
    weather_seed: int = 0


def draw_params(
    seed: int, customer_class: CustomerClass, *, weather_seed: int = 0, utc_offset_s: int = 0
) -> LoadParams:
    """Draw a meter's load parameters from its seed (deterministic; typical real-world magnitudes)."""
    u = [unit_hash(seed, 1_000 + i) for i in range(5)]
    if customer_class is CustomerClass.COMMERCIAL:
        annual = 20_000.0 * 4.0 ** u[0]  # 20-80 MWh/year, log-uniform
        pv = round(20.0 + 80.0 * u[2], 1) if u[1] < PV_SHARE[customer_class] else 0.0
    else:
        annual = 3_000.0 + 1_500.0 * u[0]  # 3,000-4,500 kWh/year
        pv = round(3.0 + 5.0 * u[2], 1) if u[1] < PV_SHARE[customer_class] else 0.0
    ev = EV_CHARGER_KW[int(u[4] * len(EV_CHARGER_KW))] if u[3] < EV_SHARE[customer_class] else 0.0
    return LoadParams(seed, customer_class, round(annual, 1), pv, ev, utc_offset_s, weather_seed)


def _bump(hour: float, centre: float, width: float) -> float:
    """A Gaussian bump on the 24-hour circle."""
    d = abs(hour - centre) % 24.0
    d = min(d, 24.0 - d)
    return math.exp(-0.5 * (d / width) ** 2)


def _smoothstep(hour: float, start: float, end: float, ramp: float) -> float:
    """About 1 between start and end, 0 outside, with logistic ramps of ``ramp`` hours."""
    return 1.0 / (1.0 + math.exp(-(hour - start) / ramp * 4.0)) - 1.0 / (1.0 + math.exp(-(hour - end) / ramp * 4.0))


def _residential_shapes(seed: int) -> tuple[list[float], list[float]]:
    """Relative W for each slot: night base, morning and evening peaks; weekends later and flatter."""
    u = [unit_hash(seed, 2_000 + i) for i in range(6)]
    base = 0.25 + 0.2 * u[0]
    morning, evening = 6.5 + 1.5 * u[1], 18.0 + 2.0 * u[2]
    am, ae = 0.6 + 0.5 * u[3], 1.0 + 0.8 * u[4]
    midday = 0.15 + 0.3 * u[5]
    weekday, weekend = [], []
    for slot in range(SLOTS_PER_DAY):
        h = (slot + 0.5) / 4.0
        common = base + ae * _bump(h, evening, 2.0)
        weekday.append(common + am * _bump(h, morning, 1.0) + midday * _bump(h, 13.0, 2.0))
        weekend.append(common + 0.8 * am * _bump(h, morning + 1.5, 1.6) + 2.0 * midday * _bump(h, 13.0, 2.5))
    return weekday, weekend


def _commercial_shapes(seed: int) -> tuple[list[float], list[float], list[float]]:
    """Relative W: business-hours plateau on weekdays, reduced Saturday, base load only on Sunday."""
    u = [unit_hash(seed, 3_000 + i) for i in range(4)]
    base = 0.2 + 0.2 * u[0]
    opens, closes = 7.0 + 2.0 * u[1], 17.0 + 3.0 * u[2]
    saturday_share = 0.2 + 0.4 * u[3]
    weekday, saturday, sunday = [], [], []
    for slot in range(SLOTS_PER_DAY):
        h = (slot + 0.5) / 4.0
        weekday.append(base + _smoothstep(h, opens, closes, 0.75))
        saturday.append(base + saturday_share * _smoothstep(h, opens + 1.0, 14.0, 0.75))
        sunday.append(base)
    return weekday, saturday, sunday


# shape table, season, weather, sun (sin-lat-sin-decl, cos-lat-cos-decl), EV start, end, carry-over
_DayState = tuple[tuple[float, ...], float, float, float, float, int, int, int]


class LoadModel:
    """One meter's load: ``model(interval_end_epoch) -> (import Wh, export Wh)`` for that interval."""

    __slots__ = (
        "_day",
        "_day_state",
        "_days",
        "_ev_slots_per_kwh",
        "_ev_wh",
        "_noise_lo",
        "_noise_span",
        "_offset",
        "_pv_wh",
        "_salt",
        "_season_amp",
        "_season_harmonic",
        "_spike_below",
        "params",
    )

    def __init__(self, params: LoadParams) -> None:
        self.params = params
        self._offset = params.utc_offset_s
        self._salt = _mix64(params.seed)
        commercial = params.customer_class is CustomerClass.COMMERCIAL
        if commercial:
            wd, sat, sun = _commercial_shapes(params.seed)
            week = [wd] * 5 + [sat, sun]
            self._season_amp, self._season_harmonic = 0.10, 2.0  # heating in winter, cooling in summer
            self._noise_lo, self._noise_span = 0.85, 0.30
            spike = 0.0  # no appliance bursts: a shop's load is already an aggregate
        else:
            wd, we = _residential_shapes(params.seed)
            week = [wd] * 5 + [we, we]
            self._season_amp, self._season_harmonic = 0.25, 1.0  # winter peak
            self._noise_lo, self._noise_span = 0.55, 0.90
            spike = _SPIKE_P * _SPIKE_WH
        self._spike_below = int(1024 * spike / _SPIKE_WH)
        mean_day = sum(sum(day) for day in week) / 7.0
        daily_wh = params.annual_kwh * 1000.0 / YEAR_DAYS - SLOTS_PER_DAY * spike
        scale = daily_wh / mean_day
        self._days = tuple(tuple(v * scale for v in day) for day in week)  # Monday first
        self._pv_wh = params.pv_kwp * 1000.0 * (INTERVAL_S / 3600.0) * _PV_PERFORMANCE
        self._ev_wh = params.ev_kw * 1000.0 * (INTERVAL_S / 3600.0)
        self._ev_slots_per_kwh = 1.0 / (params.ev_kw * INTERVAL_S / 3600.0) if params.ev_kw else 0.0
        self._day: int | None = None  # one-day cache: profile reads walk the intervals in order
        self._day_state: _DayState = self._compute_day(0)

    def __call__(self, interval_end_epoch: int) -> tuple[int, int]:
        """Import and export energy (Wh, non-negative ints) of the interval ending at that time."""
        local = interval_end_epoch - INTERVAL_S + self._offset  # start of the interval, local time
        day, second = divmod(local, DAY_S)
        slot = second // INTERVAL_S
        if day != self._day:
            self._day, self._day_state = day, self._compute_day(day)
        table, season, weather, sin_decl, cos_decl, ev_start, ev_end, ev_carry = self._day_state
        h = (self._salt + (day * SLOTS_PER_DAY + slot) * _GOLDEN) & _MASK64  # _mix64, inlined: the hot path
        h = ((h ^ (h >> 30)) * _M1) & _MASK64
        h = ((h ^ (h >> 27)) * _M2) & _MASK64
        h ^= h >> 31
        wh = table[slot] * season * (self._noise_lo + self._noise_span * ((h >> 11) * _INV_2_53))
        if (h & 0x3FF) < self._spike_below:
            wh += _SPIKE_WH
        if ev_start <= slot < ev_end or slot < ev_carry:
            wh += self._ev_wh
        if weather:
            hour_angle = (second + INTERVAL_S // 2 - 43_200) * (math.pi / 43_200)
            elevation = sin_decl + cos_decl * math.cos(hour_angle)
            if elevation > 0.0:
                wh -= self._pv_wh * elevation**1.15 * weather * (0.9 + 0.1 * ((h >> 10) & 0xFF) / 255.0)
        if wh >= 0.0:
            return int(wh + 0.5), 0
        return 0, int(0.5 - wh)

    def _compute_day(self, day: int) -> _DayState:
        """What is constant over a local day: shape table, season, weather, sun, EV session."""
        doy = day % YEAR_DAYS
        season = 1.0 + self._season_amp * math.cos(self._season_harmonic * _TWO_PI * (doy - 15.0) / YEAR_DAYS)
        weather = sin_decl = cos_decl = 0.0
        if self._pv_wh:
            declination = 0.4091 * math.sin(_TWO_PI * (doy - 81.0) / YEAR_DAYS)
            sin_decl, cos_decl = _SIN_LAT * math.sin(declination), _COS_LAT * math.cos(declination)
            weather = 0.15 + 0.85 * unit_hash(self.params.weather_seed ^ _WEATHER_SALT, day) ** 0.6
        ev_start = ev_end = ev_carry = 0
        if self._ev_wh:
            ev_start, length = self._ev_session(day)
            ev_end = ev_start + length
            previous_start, previous_length = self._ev_session(day - 1)
            ev_carry = max(0, previous_start + previous_length - SLOTS_PER_DAY)
        table = self._days[(day + 3) % 7]  # the epoch day was a Thursday
        return table, season, weather, sin_decl, cos_decl, ev_start, ev_end, ev_carry

    def _ev_session(self, day: int) -> tuple[int, int]:
        """(start slot, length in slots) of the day's charging session; length 0 when not plugged in."""
        h = _mix64(self._salt ^ _EV_SALT) + day * _GOLDEN
        u1, u2, u3 = unit_hash(h, 1), unit_hash(h, 2), unit_hash(h, 3)
        if u1 >= (0.25 if (day + 3) % 7 >= 5 else 0.35):
            return 0, 0
        start = 68 + int(u2 * 24)  # plugged in between 17:00 and 23:00
        kwh = 5.0 + 15.0 * u3
        return start, max(1, math.ceil(kwh * self._ev_slots_per_kwh))
