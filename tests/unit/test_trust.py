"""The trusted networks (--trusted) and the once-a-minute log of refused peers."""
from __future__ import annotations

import ipaddress

import pytest

from mogstored import counters, trust
from mogstored.trust import LOG_INTERVAL, MAX_LOGGED_PEERS, parse_trusted


@pytest.mark.parametrize("text, inside, outside", [
    ("10.1.2.3", ["10.1.2.3"], ["10.1.2.4", "::1"]),
    ("10.0.0.0/8", ["10.0.0.0", "10.255.255.255"], ["11.0.0.0", "9.255.255.255"]),
    ("127.0.0.1, 192.168.0.0/16", ["127.0.0.1", "192.168.77.1"], ["127.0.0.2"]),
    ("::1", ["::1"], ["::2", "127.0.0.1"]),
    ("2001:db8::/32", ["2001:db8::1", "2001:db8:ffff::"], ["2001:db9::"]),
    ("10.0.0.0/255.0.0.0", ["10.9.9.9"], ["11.0.0.1"]),
    ("0.0.0.0/0", ["1.2.3.4", "255.255.255.255"], ["::1"]),
])
def test_admits(text: str, inside: list[str], outside: list[str]) -> None:
    trusted = parse_trusted(text)
    assert all(trusted.admits(host) for host in inside)
    assert not any(trusted.admits(host) for host in outside)


def test_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    trusted = parse_trusted("127.0.0.1")
    assert trusted.admits("::ffff:127.0.0.1")
    assert not trusted.admits("::ffff:127.0.0.2")


@pytest.mark.parametrize("host", ["", "?", "localhost", "1.2.3"])
def test_no_address_is_not_trusted(host: str) -> None:
    assert not parse_trusted("0.0.0.0/0,::/0").admits(host)


def test_list_form_and_str() -> None:
    trusted = parse_trusted(["10.0.0.0/8", " ::1 "])
    assert trusted == parse_trusted("10.0.0.0/8,::1")
    assert str(trusted) == "10.0.0.0/8,::1/128"
    assert trusted.networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))


@pytest.mark.parametrize("text, named", [
    ("", "empty entry"),
    ("10.0.0.1,", "empty entry"),
    ("10.0.0.1,,10.0.0.2", "empty entry"),
    ("10.0.0.300", "`10.0.0.300'"),
    ("10.0.0.1, localhost", "`localhost'"),
    ("10.1.2.3/8", "`10.1.2.3/8': 10.1.2.3/8 has host bits set"),
    ("10.0.0.0/33", "`10.0.0.0/33'"),
    ("::1/129", "`::1/129'"),
    ("10.0.0.0/8 11.0.0.0/8", "`10.0.0.0/8 11.0.0.0/8'"),
])
def test_malformed_entries_are_named(text: str, named: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_trusted(text)
    assert named in str(e.value)


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch):
    """A fresh refusal log with its log lines collected; counters restored after."""
    lines: list[str] = []
    monkeypatch.setattr(trust, "_log", trust._RefusalLog())
    monkeypatch.setattr(trust.log, "warning", lines.append)
    monkeypatch.setattr(counters, "refused", dict.fromkeys(counters.REFUSED_LISTENERS, 0))
    return lines


def test_each_peer_logged_once_a_minute_and_every_refusal_counted(refusals, monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(trust.time, "monotonic", lambda: now[0])
    trust.refused("10.0.0.1", "http", "PUT")
    trust.refused("10.0.0.1", "mgmt", "sidechannel connection")
    trust.refused("10.0.0.2", "httpget", "DELETE")
    now[0] += LOG_INTERVAL - 0.1
    trust.refused("10.0.0.1", "http", "MKCOL")
    assert refusals == [
        "refused PUT from untrusted 10.0.0.1 on http (logged once a minute per peer)",
        "refused DELETE from untrusted 10.0.0.2 on httpget (logged once a minute per peer)",
    ]
    now[0] += 0.1
    trust.refused("10.0.0.1", "http", "MKCOL")
    assert refusals[2:] == ["refused MKCOL from untrusted 10.0.0.1 on http (logged once a minute per peer)"]
    assert counters.refused == {"http": 3, "httpget": 1, "mgmt": 1}


def test_a_scanner_from_many_addresses_gets_bounded_memory_and_log(refusals, monkeypatch) -> None:
    """Past MAX_LOGGED_PEERS peers in a minute, one summary line a minute and no more
    table entries; the table drains as its entries age."""
    now = [0.0]
    monkeypatch.setattr(trust.time, "monotonic", lambda: now[0])
    n = 3 * MAX_LOGGED_PEERS
    for i in range(n):
        trust.refused(str(ipaddress.ip_address(0x0A000000 + i)), "mgmt", "sidechannel connection")
    assert len(trust._log._logged) == MAX_LOGGED_PEERS
    assert len(refusals) == MAX_LOGGED_PEERS + 1
    assert "more than 1024 untrusted peers this minute" in refusals[-1]
    assert counters.refused["mgmt"] == n
    now[0] += LOG_INTERVAL / 2
    trust.refused("11.0.0.1", "mgmt", "sidechannel connection")  # no second summary within the minute
    assert len(refusals) == MAX_LOGGED_PEERS + 1
    now[0] += LOG_INTERVAL / 2
    trust.refused("11.0.0.1", "mgmt", "sidechannel connection")  # the old entries expired: logged alone
    assert refusals[-1].startswith("refused sidechannel connection from untrusted 11.0.0.1 on mgmt")
    assert list(trust._log._logged) == ["11.0.0.1"]
