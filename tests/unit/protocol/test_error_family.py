"""Every decoder of guest input raises one family: "the guest sent garbage" is a
``ProtocolError`` wherever it is caught."""

from __future__ import annotations

import pytest

from vmsilo.balloon.drivers.base import VmmReplyError
from vmsilo.protocol.broker import BrokerViolationError
from vmsilo.protocol.dbusproxy import ProtocolViolation
from vmsilo.protocol.errors import MuxConnectionError, ProtocolError
from vmsilo.protocol.netparams import NetParamError
from vmsilo.protocol.shareparams import ShareParamError, decode
from vmsilo.wayland.session import ViolationError
from vmsilo.wayland.wire import WireError


@pytest.mark.parametrize("error", [VmmReplyError, BrokerViolationError, ProtocolViolation,
                                   MuxConnectionError, NetParamError, ShareParamError,
                                   ViolationError, WireError])
def test_every_guest_input_error_is_a_protocol_error(error: type[Exception]) -> None:
    assert issubclass(error, ProtocolError)


def test_a_decoder_error_is_caught_as_the_family() -> None:
    with pytest.raises(ProtocolError, match="mode must be ro or rw"):
        decode("vmsilo.share=docs,/mnt/docs,rx")
