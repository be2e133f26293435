"""Small integer codes used in the hot storage and bus paths (one byte each instead of a string).

``ChannelCode`` and ``SourceCode`` are what ``IntervalRow`` tuples carry; they map one-to-one onto
the readable ``Channel`` and ``Source`` enums of :mod:`openami.domain.readings`.
"""

from __future__ import annotations

import enum

from openami.domain.readings import Channel, Source


class ChannelCode(enum.IntEnum):
    """Interval channel, named after the OBIS register it integrates; every channel is in Wh."""

    ACTIVE_IMPORT = 1  # 1.0.1.8.0.255
    ACTIVE_EXPORT = 2  # 1.0.2.8.0.255

    @property
    def channel(self) -> Channel:
        return _CHANNELS[self]

    @property
    def obis(self) -> str:
        return self.channel.value

    @property
    def unit(self) -> str:
        return "Wh"

    @classmethod
    def of(cls, channel: Channel) -> ChannelCode:
        return _CHANNEL_CODES[channel]


class SourceCode(enum.IntEnum):
    """Where a stored value came from (provenance)."""

    METER = 1
    ESTIMATED = 2
    MANUAL = 3

    @property
    def source(self) -> Source:
        return _SOURCES[self]

    @classmethod
    def of(cls, source: Source) -> SourceCode:
        return _SOURCE_CODES[source]


_CHANNELS = {ChannelCode.ACTIVE_IMPORT: Channel.ACTIVE_IMPORT, ChannelCode.ACTIVE_EXPORT: Channel.ACTIVE_EXPORT}
_CHANNEL_CODES = {v: k for k, v in _CHANNELS.items()}
_SOURCES = {SourceCode.METER: Source.METER, SourceCode.ESTIMATED: Source.ESTIMATED, SourceCode.MANUAL: Source.MANUAL}
_SOURCE_CODES = {v: k for k, v in _SOURCES.items()}
